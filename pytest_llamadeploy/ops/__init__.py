"""Operations from the runbook that are not traffic shifting.

``checklist`` (preflight), ``migrations``, ``backup``, ``restore`` and
``doctor``. The gate core calls the ``run_*`` entry points from the controller
and stores what they return in ``StageContext.watch["action_result"]``; the
suites under ``suites/{checklist,migration,backup,restore}`` assert on that
record and re-check, read-only, what can be re-checked.

Nothing here is imported by the plugin at module level: boto3, psycopg and
yoyo load only when an operation runs.
"""

from __future__ import annotations

from typing import Any


def run_action(action: str, ctx: Any, ledger: Any, settings: Any) -> dict[str, Any]:
    """The stage runner's entry point: perform ``action`` and return a JSON-ready record.

    The record lands in ``ctx.watch["action_result"]``; for preflight it is
    ``{"ok": bool, "checks": [{"name", "ok", "reason"}, ...]}``. Options read
    from ``settings`` when present: ``emergency``/``reason`` (preflight),
    ``backup_rds``/``backup_all`` (backup: neither means ``--all``, the
    runbook's default before a deployment) and ``backup_id`` (restore: None
    means the newest successful backup).
    """
    if action == "preflight":
        from .checklist import run_preflight

        reason = getattr(settings, "reason", None) if getattr(settings, "emergency", False) else None
        checks = run_preflight(ctx, ledger, emergency_reason=reason)
        return {"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]}
    if action == "backup":
        from .backup import run_backup

        rds, everything = bool(getattr(settings, "backup_rds", False)), bool(getattr(settings, "backup_all", False))
        if not rds and not everything:
            everything = True
        return run_backup(ctx, ledger, rds=True, dynamodb=everything)
    if action == "migrate":
        from .migrations import run_migrations

        return run_migrations(ctx, ledger)
    if action == "restore":
        from .restore import run_restore

        return run_restore(ctx, ledger, backup_id=getattr(settings, "backup_id", None))
    raise ValueError(f"not an operation: {action!r} (preflight, backup, migrate, restore)")
