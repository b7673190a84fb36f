"""The real openai client against the gateway in front of a faulty engine:
each upstream fault must surface as the client's ordinary exception type.
Prints one JSON object: fault -> what the client saw."""
import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=20)
out = {}


def stream(fault):
    got = {"events": 0}
    try:
        s = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is 2+2?"}],
            stream=True,
            max_tokens=300,
            extra_headers={"x-sim-fault": fault},
        )
        for _ in s:
            got["events"] += 1
        got["raised"] = None
    except openai.APIStatusError as e:
        got["raised"] = type(e).__name__
        got["status"] = e.status_code
        got["retry_after"] = e.response.headers.get("retry-after")
    except openai.APIError as e:
        got["raised"] = type(e).__name__
        got["message"] = e.message
    except Exception as e:  # what the engine's bytes make the client do
        got["raised"] = type(e).__name__
    return got


faults = sys.argv[3].split(",")
for fault in faults:
    out[fault] = stream(fault)
print(json.dumps(out))
