"""The real `openai` Python client reading forced answers from thinkgate.

Usage: python3 forced_answer.py BASE_URL MODEL BUDGET
Prints one JSON object with what the client saw; the Rust test asserts on it.
"""
import json
import sys

import openai

base, model, budget = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
prompt = [{"role": "user", "content": "difficulty: hard. Compute 17 + 25. Put the answer in \\boxed{}."}]
headers = {"x-thinkgate-thinking-budget": budget}
out = {}

# Streamed: the order of reasoning and content chunks, ids, usage.
order, reasoning, content, ids, usage, finish = [], [], [], set(), None, None
stream = client.chat.completions.create(
    model=model,
    messages=prompt,
    stream=True,
    stream_options={"include_usage": True},
    max_tokens=6000,
    extra_headers=headers,
)
for chunk in stream:
    ids.add(chunk.id)
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for c in chunk.choices:
        extra = c.delta.model_extra or {}
        r = extra.get("reasoning") or extra.get("reasoning_content")
        if r:
            order.append("r")
            reasoning.append(r)
        if c.delta.content:
            order.append("c")
            content.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
out["stream"] = {
    "order": "".join(order),
    "content": "".join(content),
    "ids": sorted(ids),
    "usage": usage,
    "finish": finish,
}

# Not streamed: one ChatCompletion.
resp = client.chat.completions.create(
    model=model, messages=prompt, max_tokens=6000, extra_headers=headers
)
msg = resp.choices[0].message
extra = msg.model_extra or {}
out["plain"] = {
    "object": resp.object,
    "reasoning": extra.get("reasoning") or extra.get("reasoning_content"),
    "content": msg.content,
    "finish": resp.choices[0].finish_reason,
    "usage": resp.usage.model_dump(),
}
print(json.dumps(out))
