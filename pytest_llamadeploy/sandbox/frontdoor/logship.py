"""CloudWatch Logs for the releases' functions: their stdout shipped, their EMF documents turned into metrics.

On AWS a function's stdout goes to its log group, and every line that is an
Embedded Metric Format document (a JSON object with an ``_aws.CloudWatchMetrics``
directive) becomes metrics once CloudWatch Logs has processed it. The sandbox's
releases write their stdout to ``logs/service-<release>.log`` (state.json names
each file); this module reads what was added since the last poll and returns the
EMF documents, with the datums CloudWatch would extract from each. The
telemetry holds those datums for the physics' EMF delay before publishing them.

Only EMF documents are shipped to CloudWatch Logs: the rest of a release's
output is the sandbox process's own logging, not the function's.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("llamadeploy.frontdoor")

#: A poll reads at most this much of one file (a runaway release must not stall the flush thread).
MAX_BYTES_PER_POLL = 4 << 20


@dataclass(frozen=True)
class EmfDocument:
    function: str
    version: str
    timestamp_ms: int
    line: str
    #: namespace -> put_metric_data datums, as CloudWatch extracts them.
    datums: dict[str, list[dict[str, Any]]]


def extract(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The metrics CloudWatch extracts from one EMF document (specification: CloudWatch_Embedded_Metric_Format_Specification).

    Each directive's metrics get one datum per dimension set; an array value is a
    list of samples (``Values``/``Counts``), a number one sample.
    """
    meta = document.get("_aws") or {}
    stamp = datetime.fromtimestamp(int(meta.get("Timestamp", 0)) / 1000.0, UTC)
    out: dict[str, list[dict[str, Any]]] = {}
    for directive in meta.get("CloudWatchMetrics") or []:
        namespace = str(directive.get("Namespace", ""))
        for keys in directive.get("Dimensions") or [[]]:
            if any(k not in document for k in keys):
                continue  # CloudWatch skips a dimension set whose members are missing
            dims = [{"Name": k, "Value": str(document[k])} for k in keys]
            for metric in directive.get("Metrics") or []:
                name = metric.get("Name")
                raw = document.get(name)
                if raw is None:
                    continue
                datum: dict[str, Any] = {"MetricName": name, "Dimensions": dims, "Timestamp": stamp,
                                         "Unit": metric.get("Unit", "None"),
                                         "StorageResolution": int(metric.get("StorageResolution", 60))}
                if isinstance(raw, list):
                    counts = Counter(float(v) for v in raw)
                    datum["Values"] = list(counts)
                    datum["Counts"] = [float(c) for c in counts.values()]
                else:
                    datum["Value"] = float(raw)
                out.setdefault(namespace, []).append(datum)
    return out


def parse_line(line: str) -> EmfDocument | None:
    """An EMF document from one stdout line (None for anything else)."""
    if not line.startswith("{") or '"_aws"' not in line:
        return None
    try:
        document = json.loads(line)
    except ValueError:
        return None
    meta = document.get("_aws") if isinstance(document, dict) else None
    if not isinstance(meta, dict) or not meta.get("CloudWatchMetrics"):
        return None
    return EmfDocument(function=str(document.get("FunctionName", "")), version=str(document.get("Version", "")),
                       timestamp_ms=int(meta.get("Timestamp", 0)), line=line, datums=extract(document))


class LogShipper:
    """Reads the releases' stdout files incrementally (state.json says which) and yields their EMF documents."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self._offsets: dict[Path, int] = {}
        self._first_poll = True
        self.documents = 0

    def _files(self) -> list[Path]:
        try:
            data = json.loads((self.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return []
        files = []
        for entry in (data.get("versions") or {}).values():
            path = entry.get("log") if isinstance(entry, dict) else None
            if path:
                files.append(Path(path))
        return files

    def poll(self) -> list[EmfDocument]:
        documents: list[EmfDocument] = []
        for path in self._files():
            try:
                size = path.stat().st_size
            except OSError:
                continue
            offset = self._offsets.get(path)
            if offset is None:
                # Files already there when the front door starts hold earlier runs' output (the log is
                # appended across restarts): ship from now on. A release started later is read whole.
                offset = size if self._first_poll else 0
            if size < offset:
                offset = 0  # truncated or replaced
            if size == offset:
                self._offsets[path] = offset
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read(min(size - offset, MAX_BYTES_PER_POLL))
            # Ship whole lines only: a line still being written is read at the next poll.
            end = chunk.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            for raw in chunk[:end].splitlines():
                document = parse_line(raw.decode("utf-8", "replace"))
                if document is not None:
                    documents.append(document)
        self._first_poll = False
        self.documents += len(documents)
        return documents
