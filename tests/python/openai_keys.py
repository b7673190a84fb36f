"""The real `openai` Python client against a gateway that asks for client keys.

Usage: python3 openai_keys.py BASE_URL MODEL GOOD_KEY
Prints one JSON object: what the client raised or got with no key, a wrong
key and the right one; the Rust test asserts on it.
"""
import json
import sys

import httpx
import openai

base, model, good = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
for name, key in [("none", "none"), ("wrong", "sk-wrong-0123456789"), ("good", good)]:
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    try:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Compute 6 * 7."}],
            max_tokens=2000,
        )
        out[name] = {"ok": True, "content": r.choices[0].message.content}
    except openai.AuthenticationError as e:
        out[name] = {"ok": False, "error": "authentication", "status": e.status_code, "message": str(e)}
    except openai.APIError as e:
        out[name] = {"ok": False, "error": type(e).__name__, "message": str(e)}
# a control endpoint through the client's raw access: refused, not forwarded
client = openai.OpenAI(base_url=base, api_key=good, max_retries=0)
try:
    client.post("/sleep", cast_to=httpx.Response, body={})
    out["sleep"] = {"ok": True}
except openai.NotFoundError as e:
    out["sleep"] = {"ok": False, "status": e.status_code}
print(json.dumps(out))
