"""The real `openai` package against Plexus's gateway: models, a completion, a stream,
a bad key. Prints one JSON line of what it saw."""

import json
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
seen = {}
seen["models"] = sorted(m.id for m in client.models.list())
done = client.chat.completions.create(
    model="standin", messages=[{"role": "user", "content": "ping"}], max_tokens=20
)
seen["text"] = done.choices[0].message.content
seen["tokens"] = done.usage.total_tokens
chunks = client.chat.completions.create(
    model="standin/other-model", messages=[{"role": "user", "content": "stream me"}], stream=True
)
chunks = list(chunks)
seen["streamed"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
seen["stream_chunks"] = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
seen["stream_tokens"] = next(c.usage.total_tokens for c in chunks if c.usage)
tools = [{"type": "function", "function": {"name": "weather", "description": "the weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
asked = [{"role": "user", "content": "weather in Oslo?"}]
done = client.chat.completions.create(model="standin", messages=asked, tools=tools)
call = done.choices[0].message.tool_calls[0]
seen["tool_call"] = {"name": call.function.name, "arguments": json.loads(call.function.arguments)}
asked.append(done.choices[0].message.model_dump(exclude_none=True))
asked.append({"role": "tool", "tool_call_id": call.id, "content": "3 degrees"})
done = client.chat.completions.create(model="standin", messages=asked, tools=tools)
seen["after_tool"] = done.choices[0].message.content
# The package asks for base64 by default and decodes it.
vectors = client.embeddings.create(model="standin", input=["hello", "hi"])
seen["embeddings"] = [list(d.embedding) for d in vectors.data]
bad = openai.OpenAI(base_url=base, api_key="plx_nope_wrong", max_retries=0)
try:
    bad.chat.completions.create(model="standin", messages=[{"role": "user", "content": "x"}])
    seen["bad_key"] = "accepted"
except openai.AuthenticationError as e:
    seen["bad_key"] = e.status_code
print(json.dumps(seen))
