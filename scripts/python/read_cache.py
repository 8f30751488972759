#!/usr/bin/env python3
"""Reads a probe cache folder with stock Python (json, hashlib, numpy, safetensors) and checks it.

usage: read_cache.py ROOT [EXPECTED.json]

For every entry (a folder holding meta.json) under ROOT: meta.json names the entry's key (its
path under ROOT), the payload's format, size and SHA-256; the payload is the file
data-<sha256[:16]>.<format> beside it. The script checks the size and the checksum, loads
safetensors payloads with safetensors.numpy.load_file and JSON-lines payloads with json.

EXPECTED.json, when given: {"entries": [{"key": "<path>", "tensors": {"<name>": {"shape": [..],
"values": [..]}}} | {"key": "<path>", "generations": [<record>, ...]}]}; the entries under ROOT
must be exactly these, with exactly these values (float32) and records.

Exits 0 when everything checks, 1 otherwise (with the reasons on stderr).
"""

import hashlib
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file


def load_entry(root, meta_path):
    """Returns (key, meta, payload) where payload is a dict of arrays or a list of records."""
    with open(meta_path, "rb") as f:
        meta = json.load(f)
    entry_dir = os.path.dirname(meta_path)
    key = os.path.relpath(entry_dir, root).replace(os.sep, "/")
    if meta["key"] != key:
        raise ValueError(f"{meta_path}: meta.json names key {meta['key']!r}, but lies at {key!r}")
    name = f"data-{meta['sha256'][:16]}.{meta['format']}"
    payload_path = os.path.join(entry_dir, name)
    with open(payload_path, "rb") as f:
        raw = f.read()
    if len(raw) != meta["size"]:
        raise ValueError(f"{payload_path}: {len(raw)} bytes, meta.json records {meta['size']}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != meta["sha256"]:
        raise ValueError(f"{payload_path}: sha256 {digest}, meta.json records {meta['sha256']}")
    if meta["format"] == "safetensors":
        payload = load_file(payload_path)
        for tname, array in payload.items():
            if array.dtype != np.float32:
                raise ValueError(f"{payload_path}: tensor {tname} is {array.dtype}, not float32")
    elif meta["format"] == "jsonl":
        payload = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    else:
        raise ValueError(f"{meta_path}: unknown format {meta['format']!r}")
    return key, meta, payload


def check_expected(entries, expected):
    errors = []
    want = {e["key"]: e for e in expected["entries"]}
    if set(want) != set(entries):
        errors.append(f"entries differ: found {sorted(entries)}, expected {sorted(want)}")
    for key, exp in want.items():
        if key not in entries:
            continue
        meta, payload = entries[key]
        if "tensors" in exp:
            if meta["format"] != "safetensors":
                errors.append(f"{key}: format {meta['format']}, expected safetensors")
                continue
            if set(payload) != set(exp["tensors"]):
                errors.append(f"{key}: tensors {sorted(payload)}, expected {sorted(exp['tensors'])}")
            for tname, t in exp["tensors"].items():
                got = payload.get(tname)
                values = np.asarray(t["values"], dtype=np.float32).reshape(t["shape"])
                if got is None or got.shape != values.shape or not np.array_equal(got, values):
                    errors.append(f"{key}: tensor {tname} differs: {got!r} vs {values!r}")
        if "generations" in exp:
            if meta["format"] != "jsonl":
                errors.append(f"{key}: format {meta['format']}, expected jsonl")
            elif payload != exp["generations"]:
                errors.append(f"{key}: records differ: {payload!r} vs {exp['generations']!r}")
    return errors


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    root = argv[1]
    entries, errors = {}, []
    for dirpath, _dirs, files in os.walk(root):
        if "meta.json" in files:
            try:
                key, meta, payload = load_entry(root, os.path.join(dirpath, "meta.json"))
                entries[key] = (meta, payload)
                print(f"ok {key} ({meta['format']}, {meta['size']} bytes)")
            except (OSError, ValueError, KeyError) as e:
                errors.append(str(e))
    if len(argv) == 3:
        with open(argv[2], encoding="utf-8") as f:
            errors += check_expected(entries, json.load(f))
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    print(f"{len(entries)} entries read, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
