"""Secret redaction for everything we write: logs, reports, the ledger."""

from __future__ import annotations

import re
from collections.abc import Iterable

_PATTERNS = [
    # user:password@ in URLs and DSNs
    (re.compile(r"(?P<pre>://[^/@\s:]+:)[^/@\s]+(?P<post>@)"), r"\g<pre>***\g<post>"),
    # key=value / key: value for secret-looking keys
    (re.compile(r"(?i)(?P<pre>\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key(?:[_-]?id)?|session[_-]?key|credential)[\w.-]*\b\s*[=:]\s*[\"']?)[^\s\"',;&]+"), r"\g<pre>***"),
    # Authorization headers
    (re.compile(r"(?i)(?P<pre>authorization:\s*(?:bearer|basic)\s+)\S+"), r"\g<pre>***"),
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
