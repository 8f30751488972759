#!/usr/bin/env python3
"""A small OpenAI-compatible completions server that stands in for `vllm serve` in tests.

It takes vLLM's command line (`[serve] MODEL --host H --port P [--served-model-name N] …`,
other flags ignored), answers `GET /health`, `GET /v1/models` and `POST /v1/completions` with
deterministic completions (a function of the prompt, the sample index and, when the temperature
is not 0, the seed), and runs as a real process, so tests can start it from the launcher, kill it
mid-run, and check what it was given. Standard library only.

With `--api-key KEY` (as vLLM), every `/v1/` request without `Authorization: Bearer KEY` is
answered 401.

Environment:
  STAND_IN_RECORD     folder: writes <port>.json (argv, selected env, pid, pgid) on start, and
                      appends "<unix time> start|stop <port>" lines to events.log
  STAND_IN_DELAY_MS   pause before answering each completion request (default 0)

A completion is `max_tokens` words `w<hex>` separated by spaces, the word j being the first four
hex digits of sha256(f"{prompt}|{k}|{seed if temperature else ''}|{j}").
"""

import hashlib
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "VLLM_TARGET_DEVICE")


def parse(argv):
    args = list(argv)
    if args and args[0] == "serve":
        args = args[1:]
    opts, model, i = {}, None, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                opts[a] = args[i + 1]
                i += 2
            else:
                opts[a] = True
                i += 1
        else:
            model = model or a
            i += 1
    model = opts.get("--model", model)
    return model, opts


def completion(prompt, k, seed, temperature, max_tokens):
    salt = str(seed) if temperature else ""
    words = []
    for j in range(max_tokens):
        h = hashlib.sha256(f"{prompt}|{k}|{salt}|{j}".encode()).hexdigest()
        words.append("w" + h[:4])
    return " " + " ".join(words), [int(hashlib.sha256(w.encode()).hexdigest()[:4], 16) for w in words]


def main():
    model, opts = parse(sys.argv[1:])
    port = int(opts["--port"])
    host = opts.get("--host", "127.0.0.1")
    served = opts.get("--served-model-name", model)
    record = os.environ.get("STAND_IN_RECORD")
    delay = float(os.environ.get("STAND_IN_DELAY_MS", "0")) / 1000.0
    api_key = opts.get("--api-key")

    def event(what):
        if record:
            with open(os.path.join(record, "events.log"), "a") as f:
                f.write(f"{time.time():.6f} {what} {port}\n")

    if record:
        os.makedirs(record, exist_ok=True)
        rec = {
            "argv": sys.argv[1:],
            "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
        }
        tmp = os.path.join(record, f"{port}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.rename(tmp, os.path.join(record, f"{port}.json"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def refused(self):
            if api_key and self.path.startswith("/v1/") and self.headers.get("Authorization") != f"Bearer {api_key}":
                self.reply(401, {"error": "Unauthorized"})
                return True
            return False

        def do_GET(self):
            if self.refused():
                return
            if self.path == "/health":
                self.reply(200, {})
            elif self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": served, "object": "model"}]})
            else:
                self.reply(404, {"detail": "Not Found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            if self.refused():
                return
            if self.path != "/v1/completions":
                return self.reply(404, {"detail": "Not Found"})
            if body.get("model") != served:
                return self.reply(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
            if delay:
                time.sleep(delay)
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            n, seed, t = int(body.get("n", 1)), body.get("seed", 0), float(body.get("temperature", 1.0))
            max_tokens = int(body.get("max_tokens", 16))
            choices = []
            for i, p in enumerate(prompts):
                for k in range(n):
                    text, ids = completion(p, k, seed, t, max_tokens)
                    choice = {"index": i * n + k, "text": text, "finish_reason": "length"}
                    if body.get("return_token_ids"):
                        choice["token_ids"] = ids
                    choices.append(choice)
            self.reply(200, {"id": "cmpl-stand-in", "object": "text_completion", "model": served, "choices": choices})

        def log_message(self, fmt, *args):
            sys.stdout.write(f"{self.address_string()} {fmt % args}\n")
            sys.stdout.flush()

    server = ThreadingHTTPServer((host, port), Handler)

    def stop(signum, frame):
        event("stop")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    event("start")
    print(f"stand-in serving {served} on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
