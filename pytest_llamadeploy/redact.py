"""Secret redaction for everything we write: logs, reports, the ledger."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_SECRET_WORD = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key(?:[_-]?id)?|session[_-]?key|credentials?)"

# scheme://[user]:password@host in any scheme (postgresql, redis, rediss, amqp, https...). The user may be
# empty (ElastiCache AUTH: redis://:TOKEN@host) and the password may hold '/', '@' and ':' unencoded: it
# runs to the *last* '@' before a host that has neither '@' nor '/'.
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@'\"<>]*):(?P<password>[^\s'\"<>]*)@(?P<host>[^\s@/'\"<>]*)")
# ``host:port/path@x`` looks like ``user:password@x``: a "password" of digits then '/' (or nothing) is a port.
_PORT = re.compile(r"\d{1,5}(?:/.*)?")


def _mask_url(match: re.Match[str]) -> str:
    if match["user"] and _PORT.fullmatch(match["password"]):
        return match[0]
    return f"{match['scheme']}{match['user']}:***@{match['host']}"


def url_passwords(url: str) -> list[str]:
    """Every form of ``url``'s password a driver may echo back, to pass to :func:`redact` as known values.

    A password holding an unencoded '/', '@' or ':' is split by the driver's URL parser, and the
    error then quotes a piece of it as a host, a port or a database name (redis-py: "Port could not
    be cast to integer value as 'T0ken'"): the whole password, its percent-decoded form and each
    piece between '/', '@', ':', '?' and '#' (:func:`redact` masks those of 4 characters or more).
    """
    from urllib.parse import unquote

    found: list[str] = []
    for match in _URL_CREDENTIALS.finditer(url or ""):
        password = match["password"]
        if not password or (match["user"] and _PORT.fullmatch(password)):
            continue
        found += [password, unquote(password), *re.split(r"[/@:?#]", password)]
    return list(dict.fromkeys(p for p in found if p))


_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization header values of every scheme (Bearer, Token, Basic, AWS4-HMAC-SHA256 Credential=...,
    # Signature=...) or none, also as a Python/JSON mapping: the credentials run to the end of the value.
    (re.compile(r"(?i)(?P<pre>\b(?:proxy-)?authorization['\"]?\s*[:=]\s*+['\"]?+)"
                r"(?!(?:[A-Za-z][A-Za-z0-9._-]*[ \t]+)?\*\*\*)(?P<scheme>[A-Za-z][A-Za-z0-9._-]*[ \t]+)?[^'\"\r\n]+"),
     r"\g<pre>\g<scheme>***"),
    (re.compile(r"(?i)(?P<pre>\bbearer\s+)[A-Za-z0-9._~+/=-]{16,}"), r"\g<pre>***"),
    # SigV4 signatures (headers and presigned URLs): hex, never innocent text.
    (re.compile(r"(?i)(?P<pre>\b(?:x-amz-)?signature=)[0-9a-f]{16,}"), r"\g<pre>***"),
    # key=value / key: value / 'key': 'value' where the key ENDS in a secret word
    # (password, auth_token, AWS_SECRET_ACCESS_KEY), not test names such as test_token_grants_access.
    (re.compile(r"(?i)(?P<pre>(?<![\w.-])[\w.-]*" + _SECRET_WORD + r"['\"]?\s*[=:]\s*['\"]?)(?!\*\*\*)[^\s\"',;&}]+"),
     r"\g<pre>***"),
    # AWS access key ids
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "AKIA****************"),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secret values and anything that looks like one.

    A known value that is a URL or DSN with a password also masks that password's pieces
    (:func:`url_passwords`), which a driver's error may quote without the rest of the URL.
    """
    known = [piece for s in secrets if s for piece in (s, *url_passwords(s))]
    for secret in sorted((s for s in known if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(_mask_url, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_SECRET_KEY = re.compile(r"(?i)(?:^|[\w.-]*?)" + _SECRET_WORD + r"$|^(?:proxy-)?authorization$")


def redact_data(value: Any) -> Any:
    """:func:`redact` on every string of JSON-like data, and the whole value of a secret-named key.

    Structural, never over serialized JSON: a pattern run over ``json.dumps`` output can eat a
    quote and leave text that no longer parses (seen: a rollback notice that crashed the stage).
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and _SECRET_KEY.search(k) and isinstance(v, str) and v
                else redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value
