"""The wire shapes of ``POST /v1/completions`` and ``POST /v1/chat/completions``.

Unknown fields are ignored, as OpenAI's clients send fields a server may not know; a
known field of the wrong type is a 400 naming it (no coercion: ``"3"`` is not a
number); a known field we do not implement (audio, suffix, ...) is a 400 too,
rather than silently ignored. A JSON ``null`` is the field's default, everywhere.

``response_format`` (json_object, json_schema) and forced tool calls (``tool_choice``
"required" or a named function) become an ``OutputConstraint``: the engine decodes under
the schema's grammar, so a finished output always parses and validates.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.api.openai.completions_tools import TOOLS_AUTO, TOOLS_FORCED, TOOLS_NONE
from gateway.api.openai.errors import check_unicode
from gateway.api.openai.wire import without_nulls
from gateway.core.errors import InvalidInputError
from gateway.core.field_path import field_path
from gateway.core.generation import GenerationRequest, OutputConstraint, SamplingParams

MAX_STOP_STRINGS = 16
MAX_PROMPTS = 128  # prompts in one /v1/completions request (each runs n sequences)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    _nulls_are_defaults = model_validator(mode="before")(without_nulls)


class StreamOptions(_Wire):
    include_usage: bool = False


class _SamplingFields(_Wire):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)  # -1 or 0: off (vLLM's and OpenAI-compatible servers' convention)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)  # vLLM's extension; 1 = off
    min_p: float | None = Field(default=None, ge=0, le=1)  # vLLM's extension; 0 = off
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None  # token id (as a string) -> bias
    cache: bool = True  # our extension: false keeps this request out of the semantic cache


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class CalledFunction(_Wire):
    name: str = Field(min_length=1)
    arguments: str  # JSON text, as OpenAI sends it back


class MessageToolCall(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None  # tool: the call this is the result of


class FunctionDefinition(_Wire):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None  # a JSON Schema of the arguments object; absent: no arguments
    strict: bool | None = None


class ToolDefinition(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Wire):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # accepted; a forced call is one call

    @property
    def tool_mode(self) -> str:
        """How the output is read: "none" (text), "auto" (text or <tool_call> blocks) or "forced" (one call object)."""
        if not self.tools or self.tool_choice == "none":
            return TOOLS_NONE
        if self.tool_choice in (None, "auto"):
            return TOOLS_AUTO
        return TOOLS_FORCED


# Known OpenAI fields this server does not implement: a 400 when set to anything but their
# no-op value, so a client never believes it got what it asked for.
_UNSUPPORTED_CHAT = {
    # The deprecated single-function API; "tools" replaces it.
    "functions": lambda v: v in (None, []),
    "function_call": lambda v: v in (None, "none"),
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
    "prediction": lambda v: v is None,
}
_UNSUPPORTED_COMPLETION = {
    "suffix": lambda v: v is None,
}


def _check_unsupported(doc: dict, table: dict) -> None:
    for name, harmless in table.items():
        if name in doc and not harmless(doc[name]):
            raise InvalidInputError(f"'{name}' is not supported by this server", param=name)


def _validation_error(exc: ValidationError) -> InvalidInputError:
    err = exc.errors()[0]
    param = field_path(tuple(err["loc"]), drop_union_tags=True)  # messages[0].content
    if err["type"] == "missing":
        return InvalidInputError(f"'{param}' is required", param=param)
    return InvalidInputError(f"'{param}': {err['msg']} (got {err.get('input')!r:.80})", param=param)


def _parse(model_cls, doc: Any, unsupported: dict):
    if not isinstance(doc, dict):
        raise InvalidInputError("the request body must be a JSON object", param="")
    _check_unsupported(doc, unsupported)
    try:
        return model_cls.model_validate(doc)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _check_texts(req: _SamplingFields) -> None:
    check_unicode(req.stop, "stop")
    check_unicode(req.user, "user")


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidInputError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}", param="stop")
    if any(s == "" for s in stops):
        raise InvalidInputError("stop strings must not be empty", param="stop")
    return stops


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} as sorted (id, bias) pairs; the engine checks the ids against its vocabulary."""
    if not bias:
        return ()
    pairs: dict[int, float] = {}
    for key, value in bias.items():
        text = key.strip()
        if not (text.isascii() and text.isdecimal()):
            raise InvalidInputError(f"'logit_bias' keys are token ids, got {key!r:.40}", param="logit_bias")
        token = int(text)
        if token in pairs:
            raise InvalidInputError(f"'logit_bias' names token {token} twice", param="logit_bias")
        pairs[token] = float(value)
    return tuple(sorted(pairs.items()))


def _sampling(req: _SamplingFields, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p),
        top_k=0 if req.top_k in (None, -1) else req.top_k,
        seed=req.seed,
        stop=_stops(req.stop),
        n=req.n,
        logprobs=logprobs,
        min_p=0.0 if req.min_p is None else float(req.min_p),
        presence_penalty=0.0 if req.presence_penalty is None else float(req.presence_penalty),
        frequency_penalty=0.0 if req.frequency_penalty is None else float(req.frequency_penalty),
        repetition_penalty=1.0 if req.repetition_penalty is None else float(req.repetition_penalty),
        logit_bias=_logit_bias(req.logit_bias),
    )


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | tuple[int, ...]]:
    """OpenAI's four prompt shapes as a list of prompts: text, or token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidInputError("'prompt' must not be empty", param="prompt")
    if isinstance(prompt[0], int):
        return [tuple(prompt)]
    if len(prompt) > MAX_PROMPTS:
        raise InvalidInputError(f"at most {MAX_PROMPTS} prompts in one request, got {len(prompt)}", param="prompt")
    prompts: list[str | tuple[int, ...]] = []
    for i, p in enumerate(prompt):
        if isinstance(p, list):
            if not p:
                raise InvalidInputError(f"'prompt[{i}]' must not be empty", param="prompt")
            prompts.append(tuple(p))
        else:
            prompts.append(p)  # type: ignore[arg-type]
    return prompts


def parse_completion(doc: Any) -> tuple[CompletionRequest, list[GenerationRequest]]:
    """One generation request per prompt (a list of prompts is several), all with the same sampling."""
    req: CompletionRequest = _parse(CompletionRequest, doc, _UNSUPPORTED_COMPLETION)
    _check_texts(req)
    check_unicode(req.prompt, "prompt")
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidInputError("'best_of' other than n is not supported by this server", param="best_of")
    if req.echo and req.logprobs is not None:
        raise InvalidInputError("'echo' together with 'logprobs' (the prompt's own logprobs) is not supported by this server", param="echo")
    sampling = _sampling(req, req.max_tokens, req.logprobs)
    gens = [
        GenerationRequest(
            model=req.model,
            sampling=sampling,
            prompt=p if isinstance(p, str) else None,
            prompt_token_ids=p if isinstance(p, tuple) else None,
            echo=req.echo,
            user=req.user or "",
            cache=req.cache,
        )
        for p in _prompts(req.prompt)
    ]
    return req, gens


def parse_chat(doc: Any) -> tuple[ChatCompletionRequest, GenerationRequest]:
    req: ChatCompletionRequest = _parse(ChatCompletionRequest, doc, _UNSUPPORTED_CHAT)
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidInputError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    _check_texts(req)
    messages = [_message(i, m) for i, m in enumerate(req.messages)]
    tools = _offered_tools(req)
    constraint = _constraint(req)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    gen = GenerationRequest(
        model=req.model,
        sampling=_sampling(req, max_tokens, logprobs),
        messages=tuple(messages),
        user=req.user or "",
        # The semantic cache keys on the conversation and sampling only: a tool or format request stays out.
        cache=req.cache and tools is None and constraint is None,
        tools=tools,
        constraint=constraint,
    )
    return req, gen


def _message(i: int, m: ChatMessage) -> dict:
    """One message as chat templates expect it (transformers' conventions)."""
    content = m.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    check_unicode(content, f"messages[{i}].content")
    check_unicode(m.name, f"messages[{i}].name")
    message: dict = {"role": m.role, "content": content or ""}
    if m.name is not None:
        message["name"] = m.name
    if m.tool_calls:
        if m.role != "assistant":
            raise InvalidInputError("only assistant messages carry 'tool_calls'", param=f"messages[{i}].tool_calls")
        calls = []
        for j, call in enumerate(m.tool_calls):
            check_unicode(call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
            try:
                arguments = json.loads(call.function.arguments)
            except ValueError:
                raise InvalidInputError("'arguments' must be a JSON text", param=f"messages[{i}].tool_calls[{j}].function.arguments") from None
            # Templates write arguments with `| tojson`: they get the object, not its text.
            calls.append({"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}})
        message["tool_calls"] = calls
    if m.role == "tool":
        if m.tool_call_id is None:
            raise InvalidInputError("a 'tool' message needs the 'tool_call_id' it answers", param=f"messages[{i}].tool_call_id")
        message["tool_call_id"] = m.tool_call_id
    return message


def _offered_tools(req: ChatCompletionRequest) -> tuple[dict, ...] | None:
    """The tools the chat template shows the model (none for tool_choice "none")."""
    if isinstance(req.tool_choice, NamedToolChoice) or req.tool_choice == "required":
        if not req.tools:
            raise InvalidInputError("'tool_choice' needs 'tools' to choose from", param="tool_choice")
    if isinstance(req.tool_choice, NamedToolChoice):
        names = [t.function.name for t in req.tools or ()]
        if req.tool_choice.function.name not in names:
            raise InvalidInputError(f"no tool named '{req.tool_choice.function.name}' in 'tools' ({', '.join(names)})", param="tool_choice.function.name")
    if req.tool_mode == TOOLS_NONE:
        return None
    seen: set[str] = set()
    offered = []
    for i, tool in enumerate(req.tools or ()):
        fn = tool.function
        if fn.name in seen:
            raise InvalidInputError(f"two tools are named '{fn.name}'", param=f"tools[{i}].function.name")
        seen.add(fn.name)
        check_unicode(fn.description, f"tools[{i}].function.description")
        function: dict = {"name": fn.name}
        if fn.description is not None:
            function["description"] = fn.description
        function["parameters"] = fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
        offered.append({"type": "function", "function": function})
    return tuple(offered)


def call_schema(name: str, parameters: dict | None) -> dict:
    """The JSON object a forced call is decoded as: its name, then its arguments (in this order)."""
    arguments = parameters if parameters is not None else {"type": "object", "properties": {}, "additionalProperties": False}
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _constraint(req: ChatCompletionRequest) -> OutputConstraint | None:
    fmt = req.response_format
    if req.tool_mode == TOOLS_FORCED:
        if fmt is not None and fmt.type != "text":
            raise InvalidInputError("'response_format' cannot be combined with a forced tool call", param="response_format")
        tools = req.tools or []
        if isinstance(req.tool_choice, NamedToolChoice):
            i = next(i for i, t in enumerate(tools) if t.function.name == req.tool_choice.function.name)
            fn = tools[i].function
            return OutputConstraint(json.dumps(call_schema(fn.name, fn.parameters)), f"tools[{i}].function.parameters")
        variants = [call_schema(t.function.name, t.function.parameters) for t in tools]
        schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
        return OutputConstraint(json.dumps(schema), "tools")
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return OutputConstraint(json.dumps({"type": "object"}), "response_format")
    if fmt.json_schema is None:
        raise InvalidInputError("'response_format.json_schema' is required for type 'json_schema'", param="response_format.json_schema")
    return OutputConstraint(json.dumps(fmt.json_schema.schema_), "response_format.json_schema.schema")
