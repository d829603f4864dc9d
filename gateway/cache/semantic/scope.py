"""What a prompt may be matched against, and when it must not be looked up at all.

A semantic hit is only safe between requests that differ in nothing but the
wording of the last user turn. So the scope, matched exactly, is: model,
resolved version, every message except the last user turn (system prompt and
the whole conversation, with roles, in order), the sampling settings, and the
prompt's format: what the model reads around the last user turn (for a chat, the
chat template rendered with that turn left out; for a plain completion, the
prompt alone), so a chat answer never answers a completion of the same words.
Only the last user turn is embedded and compared by similarity.

Requests that sample (temperature > 0, or n > 1) want varied answers; they are
not served from or stored into the cache unless the model opts in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
import xxhash

# The sampling settings that scope an answer (temperature, top_p, stop, n, ...), as JSON values.
SamplingValue = bool | int | float | str | list[str] | None

# OpenAI's default temperature when a request names none.
DEFAULT_TEMPERATURE = 1.0


@dataclass(frozen=True, slots=True)
class PromptQuery:
    model: str
    version: str
    scope: bytes  # 128-bit digest
    prompt: str  # the last user turn: what is embedded
    cacheable: bool
    reason: str = ""  # why not cacheable
    sampling: dict[str, SamplingValue] = field(default_factory=dict)


def not_cacheable(model: str, version: str, reason: str) -> PromptQuery:
    """A request that is never looked up nor stored (token-id prompt, logprobs, ...)."""
    return PromptQuery(model, version, b"", "", False, reason)


def prompt_query(
    model: str,
    version: str,
    messages: list[tuple[str, str]],
    sampling: dict[str, SamplingValue],
    *,
    allow_sampling: bool = False,
    opt_out: bool = False,
    prompt_format: str = "",
) -> PromptQuery:
    """``messages`` are (role, content) in order; a plain completion prompt is [("user", prompt)].

    ``prompt_format`` is anything else that decides the answer beyond the messages and the
    sampling settings (the rendered template around the last user turn, the model's
    generation settings), matched exactly as part of the scope."""
    last_user = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=None)
    if last_user is None:
        raise ValueError("a prompt needs at least one user message")
    context = [list(m) for i, m in enumerate(messages) if i != last_user]
    header = [model, version, context, last_user, sorted(sampling.items()), prompt_format]
    scope = xxhash.xxh3_128_digest(msgpack.packb(header, use_bin_type=True))
    prompt = messages[last_user][1]
    reason = ""
    if opt_out:
        reason = "the request opted out"
    elif not allow_sampling:
        given, n = sampling.get("temperature"), sampling.get("n")
        temperature = float(given) if isinstance(given, (int, float)) else DEFAULT_TEMPERATURE
        if temperature > 0:
            reason = f"temperature {temperature:g} > 0"
        elif isinstance(n, int) and n > 1:
            reason = f"n = {n} > 1"
    return PromptQuery(model, version, scope, prompt, not reason, reason, dict(sampling))
