"""Renders conversations with transformers' own apply_chat_template, for chat_templates.rs.

stdin: {"dirs": [model folders], "conversations": [[{"role", "content"}, ...], ...]}
stdout: {"<dir>": ["<rendering>" or {"error": "..."}, ...], ...}
Each folder is loaded with AutoTokenizer (tokenizer_config.json, chat_template.jinja), so the
template and the special tokens come from the files as transformers reads them.
"""
import json
import sys

from transformers import AutoTokenizer

req = json.load(sys.stdin)
out = {}
for d in req["dirs"]:
    tok = AutoTokenizer.from_pretrained(d)
    rows = []
    for conv in req["conversations"]:
        try:
            rows.append(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True))
        except Exception as e:  # a template's raise_exception
            rows.append({"error": str(e)})
    out[d] = rows
json.dump(out, sys.stdout, ensure_ascii=False)
