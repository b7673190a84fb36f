#!/usr/bin/env python3
"""The real `openai` client in every mode, against one base URL.

Usage: openai_modes.py BASE_URL [HEADER=VALUE ...]

Prints one JSON object: for each mode, what the client parsed (the text of
each choice by field, finish reasons, usage, the chunk count, and the
fields of the last chunk or the body as the client's models see them).
Volatile values (ids, `created`, llama.cpp's timings) are left out so that
a direct run and a run through the gateway compare equal. A parse error
fails the run.
"""

import json
import sys

import openai

base = sys.argv[1]
headers = dict(a.split("=", 1) for a in sys.argv[2:])
client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, default_headers=headers)
MSG = [{"role": "user", "content": "What is two plus two?"}]
PROMPT = "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n"
VOLATILE = {"id", "created", "timings"}


def scrub(d):
    if isinstance(d, dict):
        return {k: scrub(v) for k, v in d.items() if k not in VOLATILE}
    if isinstance(d, list):
        return [scrub(x) for x in d]
    return d


def texts_of_stream(stream, chat):
    out, finish, usage, n, last = {}, {}, None, 0, None
    for chunk in stream:
        n += 1
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for c in chunk.choices:
            fields = {}
            if chat:
                extra = c.delta.model_extra or {}
                for k in ("reasoning", "reasoning_content"):
                    if extra.get(k):
                        fields["reasoning"] = extra[k]
                if c.delta.content:
                    fields["content"] = c.delta.content
            elif c.text:
                fields["text"] = c.text
            for k, v in fields.items():
                key = f"{c.index}:{k}"
                out[key] = out.get(key, "") + v
            if c.finish_reason:
                finish[str(c.index)] = c.finish_reason
        last = chunk
    tail = scrub(last.model_dump()) if last is not None else None
    if tail:
        for c in tail.get("choices", []):
            c.pop("delta", None)
            c.pop("text", None)
    return {"text": out, "finish": finish, "usage": usage, "last": tail, "chunks>0": n > 0}


def body(resp):
    d = scrub(resp.model_dump())
    return d


result = {}
for usage in (False, True):
    opts = {"stream_options": {"include_usage": True}} if usage else {}
    s = client.chat.completions.create(model="tiny", messages=MSG, stream=True, max_tokens=200, **opts)
    result[f"chat stream usage={usage}"] = texts_of_stream(s, True)
    s = client.completions.create(model="tiny", prompt=PROMPT, stream=True, max_tokens=200, **opts)
    result[f"completions stream usage={usage}"] = texts_of_stream(s, False)
result["chat json"] = body(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=200))
result["completions json"] = body(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=200))
print(json.dumps(result, sort_keys=True))
