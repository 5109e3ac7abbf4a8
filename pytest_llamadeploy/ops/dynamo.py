"""DynamoDB content summaries: what a backup held, to check a restore against."""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: Above this many items a scan is too costly for an integrity check; the count from the backup is used.
SCAN_LIMIT = 20000


def table_summary(client: Any, table: str) -> dict[str, Any]:
    """Item count and a sha256 over the items in a stable order (None past ``SCAN_LIMIT``)."""
    items: list[str] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        items.extend(json.dumps(item, sort_keys=True) for item in page.get("Items", []))
        if len(items) > SCAN_LIMIT:
            return {"items": None, "checksum": None, "note": f"more than {SCAN_LIMIT} items: not scanned"}
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    digest = hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()
    return {"items": len(items), "checksum": digest}


def error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")
