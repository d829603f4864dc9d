"""The wire shapes of ``POST /v1/completions`` and ``POST /v1/chat/completions``.

Unknown fields are ignored, as OpenAI's clients send fields a server may not know; a
known field of the wrong type is a 400 naming it (no coercion: ``"3"`` is not a
number); a known field we do not implement (tools, suffix, ...) is a 400 too,
rather than silently ignored. A JSON ``null`` is the field's default, everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.api.openai.errors import InvalidFieldError, check_unicode
from gateway.api.openai.wire import without_nulls
from gateway.core.generation import GenerationRequest, SamplingParams

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


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


# Known OpenAI fields this server does not implement: a 400 when set to anything but their
# no-op value, so a client never believes it got what it asked for.
_UNSUPPORTED_CHAT = {
    "tools": lambda v: v in (None, []),
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: v in (None, []),
    "function_call": lambda v: v in (None, "none"),
    "parallel_tool_calls": lambda v: True,  # meaningless without tools
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
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
            raise InvalidFieldError(name, f"'{name}' is not supported by this server")


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict"}


def _param(loc: tuple) -> str:
    """``messages[0].content`` from pydantic's location, leaving out the union-member tags it adds."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS and not part[0].isupper():
            path += ("." if path else "") + part
    return path


def _validation_error(exc: ValidationError) -> InvalidFieldError:
    err = exc.errors()[0]
    param = _param(tuple(err["loc"]))
    if err["type"] == "missing":
        return InvalidFieldError(param, f"'{param}' is required")
    return InvalidFieldError(param, f"'{param}': {err['msg']} (got {err.get('input')!r:.80})")


def _parse(model_cls, doc: Any, unsupported: dict):
    if not isinstance(doc, dict):
        raise InvalidFieldError("", "the request body must be a JSON object")
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
        raise InvalidFieldError("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    if any(s == "" for s in stops):
        raise InvalidFieldError("stop", "stop strings must not be empty")
    return stops


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} as sorted (id, bias) pairs; the engine checks the ids against its vocabulary."""
    if not bias:
        return ()
    pairs: dict[int, float] = {}
    for key, value in bias.items():
        text = key.strip()
        if not (text.isascii() and text.isdecimal()):
            raise InvalidFieldError("logit_bias", f"'logit_bias' keys are token ids, got {key!r:.40}")
        token = int(text)
        if token in pairs:
            raise InvalidFieldError("logit_bias", f"'logit_bias' names token {token} twice")
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
        raise InvalidFieldError("prompt", "'prompt' must not be empty")
    if isinstance(prompt[0], int):
        return [tuple(prompt)]
    if len(prompt) > MAX_PROMPTS:
        raise InvalidFieldError("prompt", f"at most {MAX_PROMPTS} prompts in one request, got {len(prompt)}")
    prompts: list[str | tuple[int, ...]] = []
    for i, p in enumerate(prompt):
        if isinstance(p, list):
            if not p:
                raise InvalidFieldError("prompt", f"'prompt[{i}]' must not be empty")
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
        raise InvalidFieldError("best_of", "'best_of' other than n is not supported by this server")
    if req.echo and req.logprobs is not None:
        raise InvalidFieldError(
            "echo", "'echo' together with 'logprobs' (the prompt's own logprobs) is not supported by this server"
        )
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
        raise InvalidFieldError("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    _check_texts(req)
    messages = []
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        check_unicode(content, f"messages[{i}].content")
        check_unicode(m.name, f"messages[{i}].name")
        message = {"role": m.role, "content": content or ""}
        if m.name is not None:
            message["name"] = m.name
        messages.append(message)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    gen = GenerationRequest(
        model=req.model,
        sampling=_sampling(req, max_tokens, logprobs),
        messages=tuple(messages),
        user=req.user or "",
        cache=req.cache,
    )
    return req, gen
