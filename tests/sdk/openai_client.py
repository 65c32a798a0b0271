"""The official OpenAI Python SDK, unchanged, against a Tollgate gateway.

Run by tests/tests/sdks.rs with TOLLGATE_BASE (the gateway's URL), TOLLGATE_KEY (a consumer key) and
TOLLGATE_MODEL (a routed model). Each check prints one line; any failure raises, and the exit status is not 0.
"""

import json
import os

import openai

BASE = os.environ["TOLLGATE_BASE"]
KEY = os.environ["TOLLGATE_KEY"]
MODEL = os.environ["TOLLGATE_MODEL"]

client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=30)
messages = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello from the OpenAI SDK through Tollgate."},
]


def report(check, **facts):
    print(json.dumps({"sdk": "openai", "version": openai.__version__, "check": check, **facts}), flush=True)


whole = client.chat.completions.create(model=MODEL, messages=messages)
assert whole.object == "chat.completion", whole
assert whole.choices[0].message.content, whole
assert whole.choices[0].finish_reason == "stop", whole
assert whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0, whole.usage
assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens, whole.usage
report("whole", model=whole.model, usage=whole.usage.model_dump())

pieces, usage, finish = [], None, None
for chunk in client.chat.completions.create(
    model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
):
    assert chunk.object == "chat.completion.chunk", chunk
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
    if chunk.usage is not None:
        usage = chunk.usage
assert "".join(pieces), pieces
assert finish == "stop", finish
assert usage is not None and usage.completion_tokens > 0, usage
report("stream", text="".join(pieces), usage=usage.model_dump())

tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
with_tools = client.chat.completions.create(
    model=MODEL,
    messages=messages
    + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees, rain"},
    ],
    tools=tools,
    tool_choice="auto",
)
assert with_tools.choices[0].message.content, with_tools
report("tools", finish_reason=with_tools.choices[0].finish_reason)

try:
    openai.OpenAI(base_url=f"{BASE}/v1", api_key="sk-not-a-tollgate-key", max_retries=0).chat.completions.create(
        model=MODEL, messages=messages
    )
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as error:
    assert error.status_code == 401
    report("wrong key", error=type(error).__name__)

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise AssertionError("an unknown model was served")
except openai.NotFoundError as error:
    assert error.status_code == 404
    report("unknown model", error=type(error).__name__)
