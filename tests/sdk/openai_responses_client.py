"""The official OpenAI Python SDK's Responses API, unchanged, against a Tollgate gateway.

Run by tests/tests/sdks.rs with TOLLGATE_BASE (the gateway's URL), TOLLGATE_KEY (a consumer key) and
TOLLGATE_MODEL (a routed model on an OpenAI-protocol instance). Each check prints one line; any failure raises,
and the exit status is not 0.
"""

import json
import os

import openai

BASE = os.environ["TOLLGATE_BASE"]
KEY = os.environ["TOLLGATE_KEY"]
MODEL = os.environ["TOLLGATE_MODEL"]

client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=30)


def report(check, **facts):
    print(json.dumps({"sdk": "openai", "version": openai.__version__, "check": check, **facts}), flush=True)


whole = client.responses.create(
    model=MODEL,
    instructions="You are terse.",
    input="Hello from the Responses API through Tollgate.",
    max_output_tokens=200,
)
assert whole.object == "response", whole
assert whole.status == "completed", whole
assert whole.output_text, whole
assert whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0, whole.usage
assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens, whole.usage
report("whole", model=whole.model, usage=whole.usage.model_dump())

deltas, completed = [], None
for event in client.responses.create(
    model=MODEL,
    input=[{"role": "user", "content": [{"type": "input_text", "text": "Stream it, please."}]}],
    stream=True,
):
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    elif event.type == "response.completed":
        completed = event.response
assert "".join(deltas), deltas
assert completed is not None and completed.usage.output_tokens > 0, completed
assert completed.output_text == "".join(deltas), (completed.output_text, deltas)
report("stream", text="".join(deltas), usage=completed.usage.model_dump())

tools = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
with client.responses.stream(model=MODEL, input="What is the weather in Zurich?", tools=tools) as stream:
    arguments = []
    for event in stream:
        if event.type == "response.function_call_arguments.delta":
            arguments.append(event.delta)
    final = stream.get_final_response()
calls = [item for item in final.output if item.type == "function_call"]
assert calls and calls[0].name == "get_weather", final.output
assert json.loads(calls[0].arguments) == json.loads("".join(arguments)), (calls[0].arguments, arguments)
report("stream with tools", call=calls[0].name, arguments=calls[0].arguments)

try:
    openai.OpenAI(base_url=f"{BASE}/v1", api_key="sk-not-a-tollgate-key", max_retries=0).responses.create(
        model=MODEL, input="Hi"
    )
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as error:
    assert error.status_code == 401
    report("wrong key", error=type(error).__name__)
