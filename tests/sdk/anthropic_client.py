"""The official Anthropic Python SDK, unchanged, against a Tollgate gateway.

Run by tests/tests/sdks.rs with TOLLGATE_BASE (the gateway's URL), TOLLGATE_KEY (a consumer key) and
TOLLGATE_MODEL (a routed model). Each check prints one line; any failure raises, and the exit status is not 0.
"""

import json
import os

import anthropic

BASE = os.environ["TOLLGATE_BASE"]
KEY = os.environ["TOLLGATE_KEY"]
MODEL = os.environ["TOLLGATE_MODEL"]

client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0, timeout=30)
messages = [{"role": "user", "content": "Hello from the Anthropic SDK through Tollgate."}]
tools = [
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def report(check, **facts):
    print(json.dumps({"sdk": "anthropic", "version": anthropic.__version__, "check": check, **facts}), flush=True)


whole = client.messages.create(model=MODEL, max_tokens=64, system="You are terse.", messages=messages)
assert whole.type == "message" and whole.role == "assistant", whole
assert whole.content[0].type == "text" and whole.content[0].text, whole
assert whole.stop_reason == "end_turn", whole
assert whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0, whole.usage
report("whole", model=whole.model, usage=whole.usage.model_dump())

with client.messages.stream(model=MODEL, max_tokens=64, messages=messages, tools=tools) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text, text
# The upstream streamed a tool call, its arguments in fragments: they arrive whole, as a tool_use block.
assert final.stop_reason == "tool_use", final
calls = [block for block in final.content if block.type == "tool_use"]
assert len(calls) == 1 and calls[0].name == "get_weather", final.content
assert calls[0].input == {"city": "Zürich", "unit": "c"}, calls[0].input
assert final.usage.output_tokens > 0, final.usage
report("stream with tools", text=text, tool_input=calls[0].input, usage=final.usage.model_dump())

counted = client.messages.count_tokens(model=MODEL, messages=messages)
assert counted.input_tokens > 0, counted
report("count_tokens", input_tokens=counted.input_tokens)

try:
    anthropic.Anthropic(base_url=BASE, api_key="sk-not-a-tollgate-key", max_retries=0).messages.create(
        model=MODEL, max_tokens=16, messages=messages
    )
    raise AssertionError("a wrong key was accepted")
except anthropic.AuthenticationError as error:
    assert error.status_code == 401
    report("wrong key", error=type(error).__name__)

try:
    client.messages.create(model="no-such-model", max_tokens=16, messages=messages)
    raise AssertionError("an unknown model was served")
except anthropic.NotFoundError as error:
    assert error.status_code == 404
    report("unknown model", error=type(error).__name__)
