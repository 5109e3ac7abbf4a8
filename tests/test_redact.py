"""Secret redaction: what must be masked, and what must be left readable."""

from __future__ import annotations

import json
import time

import pytest

from pytest_llamadeploy.redact import redact


@pytest.mark.parametrize(("text", "secret"), [
    ("postgresql://admin:s3cretpw@db:5432/x", "s3cretpw"),
    # Finding 10: every scheme, an empty user (ElastiCache AUTH), passwords holding '/', '@' and ':'.
    ("redis://:TOKEN-elasticache-1@master.onchain.cache.amazonaws.com:6379/0", "TOKEN-elasticache-1"),
    ("rediss://default:tok/with@all:parts@cache:6379", "tok/with@all:parts"),
    ("amqp://guest:pa:ss@mq:5672//", "pa:ss"),
    ("connect to 'postgresql://app:p@ss/word@db.internal:5432/defillama' failed", "p@ss/word"),
    ("mongodb+srv://user:Zm9vYmFy@cluster0.mongodb.net/db", "Zm9vYmFy"),
    # Every Authorization scheme, as a header line or a mapping.
    ("Authorization: Token abcdefgh", "abcdefgh"),
    ("{'Authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "dXNlcjpwYXNzd29yZA=="),
    ('{"authorization": "Bearer abc.def"}', "abc.def"),
    ("Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/lambda/aws4_request, "
     "SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
     "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"),
    ("https://bucket.s3.amazonaws.com/k?X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6", "5d672d79c15b13162d9279b0855cfba6"),
    ("using password=hunter2hunter2", "hunter2hunter2"),
    ("AWS_SECRET_ACCESS_KEY=abcdEFGH1234abcd", "abcdEFGH1234abcd"),
    ("auth = {'Authorization': 'Bearer eyJzdWIiOiJhIn0.c2lnbmF0dXJl'}", "eyJzdWIiOiJhIn0.c2lnbmF0dXJl"),
    ('{"auth_token": "tok-123456789"}', "tok-123456789"),
    ("key AKIAABCDEFGHIJKLMNOP in a log", "AKIAABCDEFGHIJKLMNOP"),
])
def test_secrets_are_masked(text: str, secret: str) -> None:
    assert secret not in redact(text)


@pytest.mark.parametrize(("text", "expected"), [
    # A password holding '@', '/' or ':' is masked whole, not up to its first '@' (finding 10).
    ("postgresql://app:p@ss/word@db.internal:5432/defillama", "postgresql://app:***@db.internal:5432/defillama"),
    ("redis://:to/k@en:x@cache:6379/0", "redis://:***@cache:6379/0"),
    ("Authorization: Token 9f8e7d6c", "Authorization: Token ***"),
])
def test_whole_password_is_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_known_values_are_masked_wherever_they_appear() -> None:
    assert redact("connected to db as opaque-value-42", ["opaque-value-42"]) == "connected to db as ***"


@pytest.mark.parametrize("text", [
    "suites/functional/test_auth.py::test_token_grants_access: httpx.ReadTimeout: timed out",
    "rollback trigger lambda_error_rate: 31.2% on onchain-api version 4",
    "postgresql://postgres@127.0.0.1:5432/defillama",
    "suites/health/test_health.py::test_authorization_header_is_required PASSED",
    "GET http://127.0.0.1:8080/users/@me answered 404",  # host:port/path@x is not user:password@host
    "redis://127.0.0.1:6379/0 answered PONG",
    "Token expired; Basic checks passed",
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


def test_stage_context_never_writes_an_elasticache_token(tmp_path) -> None:  # noqa: ANN001
    from pytest_llamadeploy.context import StageContext

    targets = {"api_url": "https://api.example", "ws_url": "", "postgres_dsn": "", "source": "env",
               "redis_url": "rediss://:Au7h-T0ken/x@master.onchain.cache.amazonaws.com:6379", "sqs_queue_url": ""}
    ctx = StageContext(env="prod", stage="deploy", release="v1", policy_dir="policies", targets=targets)
    ctx.save(tmp_path / "context.json")
    assert "Au7h-T0ken" not in (tmp_path / "context.json").read_text()


@pytest.mark.sandbox
def test_doctor_never_prints_a_redis_auth_token(tmp_path) -> None:  # noqa: ANN001
    """``llamadeploy doctor``'s Redis check against a real Redis that requires AUTH (ElastiCache's shape)."""
    import shutil
    import subprocess

    from pytest_llamadeploy.ops.doctor import check_redis
    from tests.support.moto import free_port

    binary = shutil.which("redis-server")
    if not binary:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--requirepass", "s3cr3t/T0ken@x", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, password="s3cr3t/T0ken@x", socket_timeout=0.5).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        good = check_redis(f"redis://:s3cr3t%2FT0ken%40x@127.0.0.1:{port}/0")
        bad = check_redis(f"redis://:wrong/T0ken@x@127.0.0.1:{port}/0")
    finally:
        proc.terminate()
        proc.wait(10)
    assert good.ok and "T0ken" not in good.detail and f"redis://:***@127.0.0.1:{port}/0" in good.detail
    # redis-py splits the unencoded password at its '/' and quotes the first piece as the port.
    assert not bad.ok and "T0ken" not in bad.detail + "".join(bad.resolution) and "wrong" not in bad.detail


@pytest.mark.parametrize(("url", "error", "piece"), [
    # redis-py: the unencoded '/' ends the netloc, so the password's first piece becomes the port.
    ("redis://:ElastiCacheT0ken/x@cache:6379/0", "Port could not be cast to integer value as 'ElastiCacheT0ken'",
     "ElastiCacheT0ken"),
    # libpq: the first '@' ends the password, so its next piece becomes the host.
    ("postgresql://app:pa55@w0rd/2024@db:5432/x", "failed to resolve host 'w0rd'", "w0rd"),
], ids=["redis-port", "libpq-host"])
def test_pieces_of_a_known_urls_password_are_masked_in_driver_errors(url: str, error: str, piece: str) -> None:
    # Finding 10, seen in `llamadeploy doctor --env staging` with LLAMA_REDIS_URL holding such a token.
    from types import SimpleNamespace

    from pytest_llamadeploy.evidence import _known_secrets

    assert piece not in redact(error, [url])
    assert piece not in redact(error, _known_secrets(SimpleNamespace(targets={"redis_url": url})))  # JUnit, Allure


def test_a_port_and_path_are_not_taken_for_a_password() -> None:
    from pytest_llamadeploy.redact import url_passwords

    assert url_passwords("http://127.0.0.1:8080/users/@me") == []
    assert url_passwords("postgresql://postgres@127.0.0.1:5432/db") == []
    assert redact("GET /users answered 8080", ["http://127.0.0.1:8080/users/@me"]) == "GET /users answered 8080"


def test_structured_records_are_redacted_per_value_and_stay_valid() -> None:
    # A pattern over json.dumps() ate a closing quote ("token=abc\"def"): the rollback notice then
    # crashed the stage mid-rollback (seen in a rehearsal). Redacting value by value cannot break JSON,
    # and it sees a secret that JSON escaping hid from the text pattern.
    from pytest_llamadeploy.redact import redact_data

    record = {"reason": 'AssertionError: token=abc"def', "details": {"password": "hunter2", "n": 3,
              "failed_tests": ['got {"token": "eyJabcdefghijklmnop.qrstuv", "user": "x"}']}}
    clean = redact_data(record)
    assert json.loads(json.dumps(clean)) == clean
    assert clean == {"reason": 'AssertionError: token=***"def', "details": {
        "password": "***", "n": 3, "failed_tests": ['got {"token": "***", "user": "x"}']}}
