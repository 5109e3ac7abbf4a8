"""Attachments: one value type the gate core builds, written either into a running test or a results dir.

Every textual body goes through ``redact`` on the way in, so nothing written to
the report can carry a DSN password or a token, whoever built the attachment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llamadeploy.redact import redact

# mime type -> file extension Allure uses to pick a viewer
_EXTENSIONS = {
    "application/json": "json",
    "application/yaml": "yaml",
    "text/plain": "txt",
    "text/html": "html",
    "text/csv": "csv",
    "image/png": "png",
}
_TEXT_TYPES = {"application/json", "application/yaml", "text/plain", "text/html", "text/csv"}


@dataclass(frozen=True)
class Attachment:
    """A named body with its mime type. Build with the class methods rather than by hand."""

    name: str
    body: bytes
    mime: str

    @property
    def extension(self) -> str:
        return _EXTENSIONS.get(self.mime, "bin")

    @classmethod
    def text(cls, name: str, text: str, *, mime: str = "text/plain", secrets: Iterable[str] = ()) -> Attachment:
        if mime not in _TEXT_TYPES:
            raise ValueError(f"attachment {name!r}: mime {mime!r} is not textual; use one of {sorted(_TEXT_TYPES)}")
        return cls(name, redact(text, secrets).encode("utf-8"), mime)

    @classmethod
    def json(cls, name: str, data: Any, *, secrets: Iterable[str] = ()) -> Attachment:
        # default=str so datetimes and Decimals from the core never break a report
        text = json.dumps(data, indent=2, sort_keys=False, default=str)
        return cls.text(name, text, mime="application/json", secrets=secrets)

    @classmethod
    def yaml(cls, name: str, text: str, *, secrets: Iterable[str] = ()) -> Attachment:
        return cls.text(name, text, mime="application/yaml", secrets=secrets)

    @classmethod
    def html(cls, name: str, text: str, *, secrets: Iterable[str] = ()) -> Attachment:
        return cls.text(name, text, mime="text/html", secrets=secrets)

    @classmethod
    def png(cls, name: str, data: bytes) -> Attachment:
        if not data.startswith(b"\x89PNG"):
            raise ValueError(f"attachment {name!r}: body is not a PNG (see reporting.plots.plot_series)")
        return cls(name, data, "image/png")

    @classmethod
    def file(cls, name: str, path: str | Path, *, mime: str | None = None, secrets: Iterable[str] = ()) -> Attachment:
        """Read a file (e.g. the Locust HTML report); the mime type follows the suffix unless given."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"attachment {name!r}: file {path} does not exist")
        if mime is None:
            by_suffix = {ext: m for m, ext in _EXTENSIONS.items()}
            mime = by_suffix.get(path.suffix.lstrip(".").lower(), "text/plain")
            if path.suffix.lower() == ".yml":
                mime = "application/yaml"
        if mime in _TEXT_TYPES:
            return cls.text(name, path.read_text(encoding="utf-8", errors="replace"), mime=mime, secrets=secrets)
        return cls(name, path.read_bytes(), mime)

    def write_to(self, results_dir: Path) -> dict[str, str]:
        """Write the body as an Allure attachment file; return the reference a result or step lists."""
        source = f"{uuid.uuid4()}-attachment.{self.extension}"
        target = results_dir / source
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(self.body)
        tmp.replace(target)  # atomic: a report built concurrently never reads half a file
        return {"name": self.name, "source": source, "type": self.mime}

    def attach_to_current_test(self) -> None:
        """Attach to the running test through allure-pytest; a no-op when Allure is not collecting."""
        import allure

        allure.attach(self.body, name=self.name, attachment_type=self.mime, extension=self.extension)
