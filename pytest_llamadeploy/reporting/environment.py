"""``environment.properties``: the run's metadata on the report's overview (env, stage, release, versions, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from pytest_llamadeploy.redact import redact


def _escape(text: str, *, key: bool) -> str:
    # Java properties syntax: backslash escapes; keys also escape separators and spaces
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    if key:
        for ch in (" ", "=", ":", "#", "!"):
            text = text.replace(ch, "\\" + ch)
    return text


def _value(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={value[k]}" for k in sorted(value))
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def write_environment(results_dir: str | Path, mapping: Mapping[str, object], *,
                      secrets: Iterable[str] = ()) -> Path:
    """Write (replace) ``environment.properties`` in the results dir; values are redacted."""
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    lines = [f"{_escape(str(key), key=True)}={_escape(redact(_value(value), secrets), key=False)}"
             for key, value in mapping.items()]
    target = results / "environment.properties"
    tmp = target.with_suffix(".properties.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target
