"""Secret redaction: what must be masked, and what must be left readable."""

from __future__ import annotations

import pytest

from pytest_llamadeploy.redact import redact


@pytest.mark.parametrize(("text", "secret"), [
    ("postgresql://admin:s3cretpw@db:5432/x", "s3cretpw"),
    ("using password=hunter2hunter2", "hunter2hunter2"),
    ("AWS_SECRET_ACCESS_KEY=abcdEFGH1234abcd", "abcdEFGH1234abcd"),
    ("auth = {'Authorization': 'Bearer eyJzdWIiOiJhIn0.c2lnbmF0dXJl'}", "eyJzdWIiOiJhIn0.c2lnbmF0dXJl"),
    ('{"auth_token": "tok-123456789"}', "tok-123456789"),
    ("key AKIAABCDEFGHIJKLMNOP in a log", "AKIAABCDEFGHIJKLMNOP"),
])
def test_secrets_are_masked(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_known_values_are_masked_wherever_they_appear() -> None:
    assert redact("connected to db as opaque-value-42", ["opaque-value-42"]) == "connected to db as ***"


@pytest.mark.parametrize("text", [
    "suites/functional/test_auth.py::test_token_grants_access: httpx.ReadTimeout: timed out",
    "rollback trigger lambda_error_rate: 31.2% on onchain-api version 4",
    "postgresql://postgres@127.0.0.1:5432/defillama",
])
def test_ordinary_text_stays_readable(text: str) -> None:
    assert redact(text) == text


def test_stage_context_never_writes_a_password(tmp_path) -> None:  # noqa: ANN001
    from pytest_llamadeploy.context import StageContext

    plain = {"api_url": "http://127.0.0.1:1", "ws_url": "", "postgres_dsn": "postgresql://postgres@127.0.0.1:5/db",
             "redis_url": "", "sqs_queue_url": "", "source": "sandbox"}
    ctx = StageContext(env="prod", stage="deploy", release="v1", policy_dir="policies", targets=plain)
    ctx.save(tmp_path / "a.json")
    assert StageContext.load(tmp_path / "a.json").targets == plain
    secret = {**plain, "postgres_dsn": "postgresql://admin:pw-9f8e7d@db/x", "source": "env"}
    ctx = StageContext(env="prod", stage="deploy", release="v1", policy_dir="policies", targets=secret)
    ctx.save(tmp_path / "b.json")
    assert "pw-9f8e7d" not in (tmp_path / "b.json").read_text()
    assert "pw-9f8e7d" not in repr(ctx)
