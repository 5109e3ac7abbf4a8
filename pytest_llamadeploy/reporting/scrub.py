"""Redact what allure-pytest wrote into a results directory on its own.

Our own attachments and the stage verdict pass through ``redact`` when they are
built, but allure-pytest writes each gate test's result itself: the failure
trace (pytest's long traceback prints fixture arguments, such as a dict holding
``'Authorization': 'Bearer <token>'``), captured stdout/stderr/log attachments,
parameters. Nothing of ours sits on that path, so after the session the
controller rewrites the files written during it (JSON strings and textual
attachments) through ``redact`` plus the token shapes below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytest_llamadeploy.redact import redact

# Shapes ``redact`` misses when a secret sits in a Python repr rather than a header line:
# "'Authorization': 'Bearer eyJ...'" and bare JWT-like tokens (base64url JSON header).
_TOKEN_PATTERNS = [
    (re.compile(r"(?i)(?P<pre>\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\g<pre>***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)*"), "***"),
]
_TEXT_SUFFIXES = {".txt", ".json", ".yaml", ".yml", ".html", ".csv", ".log", ".xml", ".properties"}


def scrub_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``redact`` plus bearer/JWT tokens in any quoting."""
    text = redact(text, secrets)
    for pattern, replacement in _TOKEN_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _scrub_json(node: Any, secrets: list[str]) -> Any:
    if isinstance(node, str):
        return scrub_text(node, secrets)
    if isinstance(node, list):
        return [_scrub_json(v, secrets) for v in node]
    if isinstance(node, dict):
        return {k: _scrub_json(v, secrets) for k, v in node.items()}
    return node


def _rewrite(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".scrub")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a report built concurrently never reads half a file


def scrub_results(results_dir: str | Path, *, since: float = 0.0, secrets: Iterable[str] = ()) -> list[Path]:
    """Redact every textual file modified at or after ``since`` (epoch s); return the files changed."""
    results = Path(results_dir)
    if not results.is_dir():
        return []
    wanted = list(secrets)
    changed = []
    for path in sorted(results.iterdir()):
        if not path.is_file() or path.suffix.lower() not in _TEXT_SUFFIXES:
            continue
        try:
            if path.stat().st_mtime < since:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a binary body with a text suffix, or a file removed meanwhile: nothing to redact
        if path.name.endswith(("-result.json", "-container.json")):
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            if data is not None:
                cleaned_data = _scrub_json(data, wanted)
                if cleaned_data != data:
                    _rewrite(path, json.dumps(cleaned_data, ensure_ascii=False))
                    changed.append(path)
                continue
        cleaned = scrub_text(text, wanted)
        if cleaned != text:
            _rewrite(path, cleaned)
            changed.append(path)
    return changed


def scrub_junit_xml(path: str | Path, secrets: Iterable[str] = ()) -> bool:
    """Redact a ``--junitxml`` report in place (every attribute and text node); True if it changed.

    pytest writes the failure's long traceback, fixture arguments included, into
    ``<failure message=... >text</failure>`` and captured output into
    ``<system-out>``: the same leaks as allure-pytest's results, and CI uploads
    this file too. Parsed rather than matched as text, so a quote escaped as
    ``&quot;`` hides nothing from the patterns.
    """
    import xml.etree.ElementTree as ET

    target = Path(path)
    try:
        tree = ET.parse(target)
    except (OSError, ET.ParseError):
        return False
    wanted = list(secrets)
    changed = False
    for element in tree.iter():
        for key, value in list(element.attrib.items()):
            cleaned = scrub_text(value, wanted)
            if cleaned != value:
                element.set(key, cleaned)
                changed = True
        for attr in ("text", "tail"):
            value = getattr(element, attr)
            if value:
                cleaned = scrub_text(value, wanted)
                if cleaned != value:
                    setattr(element, attr, cleaned)
                    changed = True
    if changed:
        tmp = target.with_name(target.name + ".scrub")
        tree.write(tmp, encoding="utf-8", xml_declaration=True)
        tmp.replace(target)
    return changed
