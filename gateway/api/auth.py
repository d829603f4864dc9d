"""Who may call what: the admin token (model control and ``/v2/admin``) and API keys (inference).

One parser and one comparison serve HTTP headers and gRPC metadata alike. Credentials
travel as ``Authorization: Bearer <secret>`` (gRPC: metadata ``authorization``), are
compared as bytes in constant time, and never appear in a message or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.core.errors import (
    AdminDisabledError,
    InvalidApiKeyError,
    PermissionDeniedError,
    UnauthenticatedError,
)

# One line per refused token, never the token; rate-limited by the log set-up (monitoring.logs).
_refused = logging.getLogger("gateway.auth.refused")

SHA256_PREFIX = "sha256:"
AUTHORIZATION = "authorization"


def bearer_token(value: str | bytes | None) -> bytes | None:
    """The secret of an ``Authorization: Bearer <secret>`` value, as bytes; None when absent or
    of another scheme.

    aiohttp hands header bytes over as UTF-8 with surrogate escapes, so a raw ``\\xff`` arrives
    as a lone surrogate: encoded back the same way it is the bytes the client sent, never an
    exception. Configured secrets are printable ASCII (settings), so such a value just mismatches.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate no decoder of ours produces: still no match
            raw = value.encode("utf-8", "replace")
    else:
        raw = value
    scheme, _, secret = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    secret = secret.strip()
    return secret or None


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str = AUTHORIZATION) -> str | bytes | None:
    """The first value of ``key`` in gRPC invocation metadata (keys arrive lower-case)."""
    for k, v in metadata or ():
        if k == key:
            return v
    return None


class AdminToken:
    """The operator's token. It guards ``/v2/admin`` (off = those routes answer 404) and, when set,
    model control: repository index, load and unload on both protocols (as Triton's
    ``model-repository`` restricted protocol)."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def require(self, authorization: str | bytes | None, peer: str | None = "") -> None:
        """For ``/v2/admin`` routes: no token configured means the routes do not exist."""
        if not self._token:
            raise AdminDisabledError("admin endpoints are off: the server has no admin_token")
        self._check(authorization, "admin endpoints need", peer)

    def check_model_control(self, authorization: str | bytes | None, peer: str | None = "") -> None:
        """For repository index/load/unload: open when no token is configured (Triton's default)."""
        if self._token:
            self._check(authorization, "model control (repository index, load, unload) needs", peer)

    def _check(self, authorization: str | bytes | None, what: str, peer: str | None) -> None:
        given = bearer_token(authorization)
        if given is None:
            raise UnauthenticatedError(f"{what} 'Authorization: Bearer <admin_token>'")
        if not hmac.compare_digest(given, self._token):
            _refused.warning("admin: refused a request with a wrong token from %s", peer or "?")
            raise PermissionDeniedError("wrong admin token")


class ApiKeys:
    """Keys that inference routes accept: plain, or ``sha256:<hex>`` of the key (no key at rest).

    Every configured key is compared, in constant time, whatever matched earlier: the time
    taken says nothing about which key (or how much of one) was right.
    """

    __slots__ = ("_plain", "_digests")

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._plain: list[bytes] = []
        self._digests: list[bytes] = []
        for entry in entries:
            if entry.startswith(SHA256_PREFIX):
                self._digests.append(bytes.fromhex(entry[len(SHA256_PREFIX):]))
            else:
                self._plain.append(entry.encode())

    @property
    def enabled(self) -> bool:
        return bool(self._plain or self._digests)

    def __len__(self) -> int:
        return len(self._plain) + len(self._digests)

    def matches(self, key: bytes) -> bool:
        ok = False
        for plain in self._plain:
            ok |= hmac.compare_digest(key, plain)
        if self._digests:
            digest = hashlib.sha256(key).digest()
            for expected in self._digests:
                ok |= hmac.compare_digest(digest, expected)
        return ok

    def check(self, authorization: str | bytes | None) -> None:
        if not self.enabled:
            return
        given = bearer_token(authorization)
        if given is None:
            raise UnauthenticatedError("this route needs an API key: 'Authorization: Bearer <api key>'")
        if not self.matches(given):
            raise InvalidApiKeyError("invalid API key")


@dataclass(frozen=True, slots=True)
class AccessControl:
    admin: AdminToken
    api_keys: ApiKeys

    @classmethod
    def from_settings(cls, settings) -> AccessControl:
        return cls(AdminToken(settings.admin_token), ApiKeys(settings.api_key_entries))

    @classmethod
    def open(cls) -> AccessControl:
        return cls(AdminToken(""), ApiKeys())
