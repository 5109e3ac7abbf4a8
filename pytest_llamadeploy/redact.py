"""Secret redaction for everything we write: logs, reports, the ledger."""

from __future__ import annotations

import re
from collections.abc import Iterable

_SECRET_WORD = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key(?:[_-]?id)?|session[_-]?key|credentials?)"
_PATTERNS = [
    # user:password@ in URLs and DSNs
    (re.compile(r"(?P<pre>://[^/@\s:]+:)[^/@\s]+(?P<post>@)"), r"\g<pre>***\g<post>"),
    # Authorization headers, also as a Python/JSON mapping: 'Authorization': 'Bearer eyJ...'
    (re.compile(r"(?i)(?P<pre>authorization['\"]?\s*[:=]\s*['\"]?(?:bearer|basic)\s+)[^\s'\",}]+"), r"\g<pre>***"),
    (re.compile(r"(?i)(?P<pre>\bbearer\s+)[A-Za-z0-9._~+/=-]{16,}"), r"\g<pre>***"),
    # key=value / key: value / 'key': 'value' where the key ENDS in a secret word
    # (password, auth_token, AWS_SECRET_ACCESS_KEY), not test names such as test_token_grants_access.
    (re.compile(r"(?i)(?P<pre>(?<![\w.-])[\w.-]*" + _SECRET_WORD + r"['\"]?\s*[=:]\s*['\"]?)(?!\*\*\*)[^\s\"',;&}]+"),
     r"\g<pre>***"),
    # AWS access key ids
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "AKIA****************"),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secret values and anything that looks like one."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
