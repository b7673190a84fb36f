"""The real `openai` Python client against thinkgate (in front of the simulated engine).

Usage: python3 openai_client.py BASE_URL MODEL
Prints one JSON object with what the client saw; the Rust test asserts on it.
"""
import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
out = {}

# Streamed chat without usage requested: the gateway injects include_usage
# upstream and must hide the usage event, so no chunk carries usage.
reasoning, content, usages, ids, finish = [], [], [], set(), None
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "difficulty: easy. Compute 6 * 7."}],
    stream=True,
    max_tokens=2000,
)
for chunk in stream:
    ids.add(chunk.id)
    if chunk.usage is not None:
        usages.append(chunk.usage.model_dump())
    for c in chunk.choices:
        extra = c.delta.model_extra or {}
        r = extra.get("reasoning") or extra.get("reasoning_content")
        if r:
            reasoning.append(r)
        if c.delta.content:
            content.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
out["stream"] = {
    "reasoning": "".join(reasoning),
    "content": "".join(content),
    "usage_chunks": usages,
    "ids": sorted(ids),
    "finish": finish,
}

# Streamed with usage requested: the last chunk has it.
last_usage = None
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "difficulty: easy. Compute 2 + 2."}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        last_usage = chunk.usage.model_dump()
out["usage_requested"] = last_usage

# Non-streamed chat.
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "difficulty: easy. Compute 3 + 4."}]
)
msg = r.choices[0].message
out["plain"] = {
    "content": msg.content,
    "reasoning": (msg.model_extra or {}).get("reasoning"),
    "completion_tokens": r.usage.completion_tokens,
}

# Text completions, streamed.
text = []
for chunk in client.completions.create(model=model, prompt="difficulty: easy. Compute 5 + 5.", stream=True, max_tokens=3000):
    for c in chunk.choices:
        text.append(c.text)
out["completions"] = "".join(text)

# An error from the engine reaches the client as the engine sent it.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    out["error"] = None
except openai.NotFoundError as e:
    out["error"] = {"status": e.status_code, "message": str(e)}

print(json.dumps(out))
