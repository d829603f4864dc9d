"""Tool calls through the chat template (gateway/text/chat_template.py) and read back out of
the text (gateway/api/openai/completions_tools.py), whole and streamed."""

from __future__ import annotations

import json

from gateway.api.openai.completions_protocol import call_schema, parse_chat
from gateway.api.openai.completions_tools import TOOLS_AUTO, TOOLS_FORCED, ToolCallReader
from gateway.text.chat_template import ChatTemplate

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# A tool-aware template in the style of Qwen2.5's (much shortened).
TOOL_AWARE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }}{{ c.function.arguments | tojson }}</call>"
    "{% endfor %}{% endif %}{% endfor %}"
)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
NAMES = frozenset({"get_weather", "get_time"})


def _stream(reader: ToolCallReader, pieces: list[str], reason: str = "stop"):
    content, deltas = "", []
    for piece in pieces:
        c, d = reader.feed(piece)
        content += c
        deltas += d
    c, d, reason = reader.finish(reason)
    return content + c, deltas + d, reason


def test_a_template_without_tools_gets_them_in_its_system_turn():
    template = ChatTemplate(CHATML)
    assert not template.reads_tools
    text = template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], tools=[WEATHER])
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '"name": "get_weather"' in system and "<tool_call>" in system
    alone = template.render([{"role": "user", "content": "hi"}], tools=[WEATHER])
    assert alone.startswith("<|im_start|>system\n# Tools")
    assert template.render([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_earlier_calls_are_written_into_content_for_a_template_without_tool_calls():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    text = ChatTemplate(CHATML).render([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "21 C", "tool_call_id": "call_1"},
    ])
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in text
    assert "<|im_start|>tool\n21 C<|im_end|>" in text


def test_a_tool_aware_template_renders_tools_and_calls_itself():
    template = ChatTemplate(TOOL_AWARE)
    assert template.reads_tools
    _, gen = parse_chat({"model": "m", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "21", "tool_call_id": "call_1"},
    ]})
    text = template.render(list(gen.messages), tools=list(gen.tools))
    assert text == '<tools>get_weather;</tools>[user]hi[assistant]<call>get_weather{"city": "Paris"}</call>[tool]21'


def test_forced_call_streams_name_first_then_argument_fragments():
    text = '{"name":"get_weather","arguments":{"city":"Par\\"is","unit":"c"}}'
    reader = ToolCallReader(TOOLS_FORCED, NAMES)
    content, deltas, reason = _stream(reader, [text[i:i + 3] for i in range(0, len(text), 3)])
    assert content == "" and reason == "tool_calls"
    assert deltas[0]["id"].startswith("call_") and deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(d["function"]["arguments"] for d in deltas)
    assert json.loads(arguments) == {"city": 'Par"is', "unit": "c"}
    assert reader.calls[0]["function"]["arguments"] == arguments


def test_forced_call_cut_by_max_tokens_keeps_its_reason():
    content, deltas, reason = _stream(ToolCallReader(TOOLS_FORCED, NAMES), ['{"name":"get_weather","argu'], "length")
    assert (content, deltas, reason) == ('{"name":"get_weather","argu', [], "length")


def test_auto_reads_hermes_blocks_and_keeps_text_before_them():
    text = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' \
           '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"CET\\"}"}</tool_call>'
    reader = ToolCallReader(TOOLS_AUTO, NAMES)
    content, deltas, reason = _stream(reader, [text[i:i + 4] for i in range(0, len(text), 4)])
    assert content == "Let me check." and reason == "tool_calls"
    assert [(d["function"]["name"], json.loads(d["function"]["arguments"])) for d in deltas] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
    assert [d["index"] for d in deltas] == [0, 1]


def test_auto_text_without_calls_is_all_content_even_a_lookalike():
    for text in ("plain answer <tool", "x <tool_call>{not json}</tool_call>", 'y <tool_call>{"name": "rm", "arguments": {}}'):
        content, deltas, reason = _stream(ToolCallReader(TOOLS_AUTO, NAMES), [text[i:i + 2] for i in range(0, len(text), 2)])
        assert (content, deltas, reason) == (text, [], "stop")


def test_call_schema_puts_the_name_first():
    schema = call_schema("f", None)
    assert list(schema["properties"]) == ["name", "arguments"]
    assert schema["properties"]["arguments"]["additionalProperties"] is False
