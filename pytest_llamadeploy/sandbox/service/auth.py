"""Bearer tokens of the reference service: HMAC-SHA256 signed, with an expiry.

The secret is shared by every release of one sandbox (a file in the state
folder) so a token issued by one release is accepted by all of them, as
behind a real load balancer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path

SECRET_ENV = "LLAMA_AUTH_SECRET"
SECRET_FILE = "auth_secret"
TOKEN_TTL = 3600.0
USER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class AuthError(Exception):
    """Why a request is not authenticated (safe to show: never contains the token or secret)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(state_dir: Path) -> bytes:
    """The signing secret: env var, else the state folder's file (created once, mode 600)."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env.encode()
    path = Path(state_dir) / SECRET_FILE
    try:
        # O_EXCL: when several releases start together exactly one writes the secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        deadline = time.monotonic() + 5.0
        while True:
            value = path.read_text().strip()
            if value or time.monotonic() > deadline:
                break
            time.sleep(0.01)  # the creator is between open and write
        if not value:
            raise RuntimeError(f"{path} is empty; delete it and restart the service") from None
        return value.encode()
    value = secrets.token_hex(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value.encode()


def _sign(secret: bytes, payload: bytes) -> str:
    return _b64(hmac.new(secret, payload, hashlib.sha256).digest())


def issue(secret: bytes, user: str, ttl: float = TOKEN_TTL, now: float | None = None) -> tuple[str, float]:
    """A token for ``user`` and its expiry (epoch seconds)."""
    if not isinstance(user, str) or not USER_RE.match(user):
        raise AuthError("user must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
    expires = round((time.time() if now is None else now) + ttl, 3)
    payload = json.dumps({"sub": user, "exp": expires}, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_sign(secret, payload)}", expires


def verify(secret: bytes, token: str, now: float | None = None) -> str:
    """The token's user; raises AuthError saying what is wrong."""
    head, sep, signature = token.partition(".")
    if not sep or not head or not signature:
        raise AuthError("malformed token")
    try:
        payload = _unb64(head)
    except ValueError:
        raise AuthError("malformed token") from None
    if not hmac.compare_digest(_sign(secret, payload), signature):
        raise AuthError("bad token signature")
    try:
        claims = json.loads(payload)
        user, expires = claims["sub"], float(claims["exp"])
    except (ValueError, KeyError, TypeError):
        raise AuthError("malformed token") from None
    if (time.time() if now is None else now) >= expires:
        raise AuthError("token expired")
    return str(user)


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header; raises AuthError."""
    if not header:
        raise AuthError("missing bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token.strip()
