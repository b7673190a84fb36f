"""The real `openai` Python client against thinkgate's https listener.

Usage: python3 openai_tls.py BASE_URL MODEL CA_FILE
BASE_URL is https://localhost:PORT. Prints one JSON object with what the
client saw over TLS, trusting CA_FILE (the way a team points its clients at
a private CA), and what it saw trusting only the system's roots (the
certificate is refused: no silent plaintext, no skipped check).
"""
import json
import sys

import httpx
import openai

base, model, ca = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}

client = openai.OpenAI(
    base_url=base + "/v1", api_key="none", max_retries=0, http_client=httpx.Client(verify=ca)
)
reasoning, content, finish = [], [], None
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Compute 6 * 7."}],
    stream=True,
    max_tokens=2000,
)
for chunk in stream:
    for c in chunk.choices:
        extra = c.delta.model_extra or {}
        r = extra.get("reasoning") or extra.get("reasoning_content")
        if r:
            reasoning.append(r)
        if c.delta.content:
            content.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
out["stream"] = {"reasoning": "".join(reasoning), "content": "".join(content), "finish": finish}

whole = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Compute 6 * 7."}],
    max_tokens=2000,
)
out["whole"] = {"content": whole.choices[0].message.content, "finish": whole.choices[0].finish_reason}
out["models"] = [m.id for m in client.models.list()]

untrusting = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
try:
    untrusting.models.list()
    out["untrusted"] = {"raised": None}
except openai.APIConnectionError as e:
    out["untrusted"] = {"raised": type(e).__name__, "cause": repr(e.__cause__)}
print(json.dumps(out))
