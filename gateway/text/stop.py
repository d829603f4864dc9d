"""Stop strings matched on decoded text, across token boundaries.

Text that could be the start of a stop string is held back until the next delta shows
whether it is one; on a match the text ends just before the stop string (OpenAI's
behaviour: the stop string itself is not returned).
"""

from __future__ import annotations


class StopMatcher:
    __slots__ = ("_stops", "_held", "_longest")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self._longest = max((len(s) for s in self._stops), default=0)

    def feed(self, delta: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        if not self._stops:
            return delta, False
        text = self._held + delta
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        hold = 0
        for k in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self._stops):
                hold = k
                break
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
