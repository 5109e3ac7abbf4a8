"""Reporting API: categories, plots, environment.properties, the stage verdict result, Allure labels."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from pytest_llamadeploy.reporting import (
    CATEGORIES,
    PROBE_FAILED,
    PROVIDER_ERROR,
    THRESHOLD_BREACHED,
    Attachment,
    classify,
    plot_series,
    record_stage,
    threshold_message,
    write_environment,
)
from pytest_llamadeploy.reporting.categories import PREFIXES, allure_rules
from tests.support.forked import run_forked

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


# --- categories -------------------------------------------------------------

@pytest.mark.parametrize("message, expected", [
    ("threshold breached: error_rate = 0.09 > threshold 0.05", "Threshold breached"),
    ("Failed: rollback triggered: alarm onchain-api-errors", "Rollback triggered"),
    ("AssertionError: probe failed: GET /health on version 4 -> 502\nassert 502 == 200", "Probe failed"),
    ("botocore.exceptions.ClientError: provider error: throttled", "Provider or infrastructure error"),
    ("provider error: moto unreachable", "Provider or infrastructure error"),
    ("inconclusive: 0 datapoints for p95_latency", "Inconclusive"),
    ("some other failure mentioning threshold breached: later", None),
    ("", None),
])
def test_classify_sees_through_exception_type_but_not_mid_message(message: str, expected: str | None) -> None:
    category = classify(message)
    assert (category.name if category else None) == expected


def test_every_prefix_has_one_rule_and_rules_are_javascript_safe_regexes() -> None:
    assert [c.prefix for c in CATEGORIES] == list(PREFIXES)
    rules = allure_rules()
    assert len({r["id"] for r in rules}) == len(PREFIXES)
    for rule, prefix in zip(rules, PREFIXES, strict=True):
        regex = rule["matchers"]["message"]
        # no Python-only syntax: Allure 3 compiles these with `new RegExp`
        assert "(?P" not in regex and "\\A" not in regex
        assert re.match(regex, f"Failed: {prefix} x")


def test_threshold_message_names_metric_value_threshold_window_version() -> None:
    message = threshold_message(metric="p95_latency", value=812.0, threshold=500, window="5m",
                                version="v2 (4)", unit="ms")
    assert message == "threshold breached: p95_latency = 812ms > threshold 500ms over 5m on version v2 (4)"
    assert classify(message).prefix == THRESHOLD_BREACHED


# --- plots -------------------------------------------------------------------

def test_plot_series_is_png_with_the_threshold_line_drawn() -> None:
    import io

    from matplotlib.image import imread

    series = {"v1 (3)": [(100.0 + i, 0.001) for i in range(10)], "v2 (4)": [(100.0 + i, 0.01 * i) for i in range(10)]}
    png = plot_series(series, threshold=0.05, title="error rate", unit="ratio")
    assert png.startswith(b"\x89PNG")
    pixels = imread(io.BytesIO(png))[:, :, :3] * 255
    # the threshold is a crimson dashed line (antialiased, so "reddish"); the series are
    # blue and orange: only the threshold makes a long horizontal run of reddish pixels
    reddish = (pixels[:, :, 0] > 150) & (pixels[:, :, 1] < 110) & (pixels[:, :, 2] < 130)
    assert reddish.sum(axis=1).max() > 300


def test_plot_series_rejects_a_threshold_that_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="threshold must be a number"):
        plot_series({"v1": [(0, 1.0)]}, threshold=float("nan"), title="p95", unit="ms")


# --- environment.properties --------------------------------------------------------

def test_write_environment_redacts_and_escapes(tmp_path: Path) -> None:
    path = write_environment(tmp_path / "results", {
        "env": "sandbox", "release": "v2", "versions": {"green": "v2 (4)", "blue": "v1 (3)"},
        "weights": {"4": 0.1, "3": 0.9}, "postgres dsn": "postgresql://llama:s3cretpw@127.0.0.1:5432/defillama",
        "approver": "alice",
    })
    text = path.read_text()
    assert "s3cretpw" not in text
    assert "postgres\\ dsn=postgresql://llama:***@127.0.0.1:5432/defillama" in text
    assert "versions=blue=v1 (3), green=v2 (4)" in text
    assert "weights=3=0.9, 4=0.1" in text


# --- the stage verdict -------------------------------------------------------

def _record_failed_stage(results: Path) -> Path:
    now = time.time()
    return record_stage(
        results, env="sandbox", stage="shift10", release="v2", status="failed",
        steps=[
            {"name": "shift 10% to version 4", "start": now - 60, "stop": now - 59},
            {"name": "poll 3/3", "status": "failed", "message": "error_rate 0.09 > 0.05",
             "parameters": {"window": "1m"}},
            {"name": "rollback to version 3", "attachments": [Attachment.json("rollback record", {"to": "3"})]},
        ],
        attachments=[
            Attachment.json("stage decision", [{"metric": "error_rate", "value": 0.09, "threshold": 0.05,
                                                "window": "5m", "version": "4", "verdict": "breached"}]),
            Attachment.text("deploy output", "connecting to postgresql://u:hunter22@db/x token=abcd1234"),
            # built by hand, bypassing Attachment.text: record_stage still redacts it
            Attachment("raw output", b"password=opensesame", "text/plain"),
            Attachment.png("error rate", plot_series({"4": [(0, 0.09)]}, 0.05, "error rate")),
        ],
        failure={"metric": "error_rate", "value": 0.09, "threshold": 0.05, "window": "5m", "version": "v2 (4)"},
        started=now - 61, stopped=now, versions={"blue": "v1 (3)", "green": "v2 (4)"},
    )


def test_record_stage_writes_a_result_a_reviewer_can_read(tmp_path: Path) -> None:
    path = _record_failed_stage(tmp_path)
    result = json.loads(path.read_text())
    assert result["name"] == "[sandbox] shift10 v2: stage verdict"
    assert result["status"] == "failed"
    assert result["statusDetails"]["message"] == (
        "threshold breached: error_rate = 0.09 > threshold 0.05 over 5m on version v2 (4)")
    labels = {(label["name"], label["value"]) for label in result["labels"]}
    assert {("epic", "sandbox"), ("feature", "shift10"), ("parentSuite", "sandbox"), ("suite", "shift10")} <= labels
    assert [s["name"] for s in result["steps"]] == ["shift 10% to version 4", "poll 3/3", "rollback to version 3"]
    assert result["steps"][1]["statusDetails"]["message"] == "error_rate 0.09 > 0.05"
    assert result["steps"][0]["stop"] - result["steps"][0]["start"] == 1000
    names = {a["name"]: a for a in result["attachments"]}
    assert set(names) == {"stage decision", "deploy output", "raw output", "error rate"}
    assert names["error rate"]["type"] == "image/png"
    for attachment in [*result["attachments"], *result["steps"][2]["attachments"]]:
        assert (tmp_path / attachment["source"]).is_file()
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in (b"hunter22", b"abcd1234", b"opensesame"):
        assert secret not in written
    decision = json.loads((tmp_path / names["stage decision"]["source"]).read_text())
    assert decision[0]["threshold"] == 0.05


def _verdict(tmp_path: Path, *, stage: str = "shift10", release: str = "v3") -> dict:
    return json.loads(record_stage(tmp_path, env="sandbox", stage=stage, release=release, status="passed",
                                   steps=[], attachments=[], failure=None, started=1.0, stopped=2.0).read_text())


def test_record_stage_history_id_is_per_env_stage_and_release(tmp_path: Path) -> None:
    first = json.loads(_record_failed_stage(tmp_path / "a").read_text())  # sandbox shift10 v2
    other_release = _verdict(tmp_path / "b")
    assert first["historyId"] != other_release["historyId"], "two releases' verdicts would show as retries"
    assert first["testCaseId"] == other_release["testCaseId"]  # the same gate, though
    assert "statusDetails" not in other_release
    assert _verdict(tmp_path / "c")["historyId"] == other_release["historyId"]  # a re-run of v3 is a retry
    assert _verdict(tmp_path / "d", stage="shift50")["historyId"] != other_release["historyId"]
    release = next(p for p in other_release["parameters"] if p["name"] == "release")
    assert release == {"name": "release", "value": "v3"}


@pytest.mark.parametrize("kwargs, error", [
    ({"status": "exploded"}, "status 'exploded' is not one of"),
    ({"steps": [{"title": "x"}]}, r"steps\[0\]: unknown key\(s\) \['title'\]"),
    ({"steps": [{"status": "passed"}]}, "'name' is required"),
    ({"failure": {"metrik": "x"}}, r"unknown key\(s\) \['metrik'\]"),
    ({"failure": {"value": 1}}, "give 'message', or 'metric'"),
    ({"started": "yesterday"}, "epoch seconds"),
    ({"attachments": ["text"]}, "build it with reporting.Attachment"),
])
def test_record_stage_bad_input_names_the_key_and_the_fix(tmp_path: Path, kwargs: dict, error: str) -> None:
    args = {"env": "sandbox", "stage": "shift10", "release": "v2", "status": "failed", "steps": [],
            "attachments": [], "failure": None, "started": 1.0, "stopped": 2.0, **kwargs}
    with pytest.raises((ValueError, TypeError), match=error):
        record_stage(tmp_path, **args)


def test_attachment_file_picks_mime_and_redacts(tmp_path: Path) -> None:
    report = tmp_path / "locust.html"
    report.write_text("<html>Authorization: Bearer sekret-token-1</html>")
    attachment = Attachment.file("locust report", report)
    assert attachment.mime == "text/html"
    assert b"sekret-token-1" not in attachment.body
    with pytest.raises(FileNotFoundError, match="missing.html"):
        Attachment.file("x", tmp_path / "missing.html")
    with pytest.raises(ValueError, match="not a PNG"):
        Attachment.png("plot", b"GIF89a")


# --- labels through allure-pytest (a real pytest run with --alluredir) ------------

LABELLING_CONFTEST = '''
import pytest
from pytest_llamadeploy.reporting import apply_labels

VERSIONS = {"blue": "v1 (3)", "green": "v2 (4)"}

def pytest_collection_modifyitems(items):
    for item in items:
        if "collect" in item.name:
            apply_labels(item, env="sandbox", stage="shift10", release="v2", suite="health", versions=VERSIONS)

@pytest.hookimpl
def pytest_runtest_setup(item):
    if "setup" in item.name:
        apply_labels(item, env="sandbox", stage="shift50", release="v2", suite="compare", versions=VERSIONS)
'''


def _results(alluredir: Path) -> dict[str, dict]:
    out = {}
    for path in alluredir.glob("*-result.json"):
        data = json.loads(path.read_text())
        out[data["name"]] = data
    return out


@pytest.mark.sandbox
def test_apply_labels_from_collection_and_from_setup(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(LABELLING_CONFTEST)
    pytester.makepyfile(test_gate="def test_labelled_at_collect(): pass\n"
                                  "def test_labelled_at_setup(): assert False, 'probe failed: /health 502'\n")
    alluredir = pytester.path / "allure-results"
    result = run_forked(pytester, f"--alluredir={alluredir}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    results = _results(alluredir)
    for name, stage, suite in (("test_labelled_at_collect", "shift10", "health"),
                               ("test_labelled_at_setup", "shift50", "compare")):
        labels = {(label["name"], label["value"]) for label in results[name]["labels"]}
        assert {("epic", "sandbox"), ("feature", stage), ("story", suite),
                ("parentSuite", "sandbox"), ("suite", stage), ("subSuite", suite)} <= labels
        params = {p["name"]: p for p in results[name]["parameters"]}
        assert params["release"]["value"] == "v2"  # not allure's repr(): 'v2'
        assert params["versions"]["value"] == "blue=v1 (3), green=v2 (4)"
        assert not params["release"].get("excluded") and not params["stage"].get("excluded")
        assert params["stage"]["value"] == stage and params["env"]["value"] == "sandbox"
        assert params["versions"]["excluded"] is True
    assert classify(results["test_labelled_at_setup"]["statusDetails"]["message"]).prefix == PROBE_FAILED


RELEASE_CONFTEST = '''
import os
from pytest_llamadeploy.reporting import apply_labels

def pytest_runtest_setup(item):
    apply_labels(item, env="sandbox", stage=item.name.removeprefix("test_"), release=os.environ["RELEASE"],
                 suite="health", versions={"onchain-api": os.environ["RELEASE"]})
'''


def _gate_results(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *releases: str) -> Path:
    """The same two gate tests (stages shift10 and shift50) run once per release into one results folder."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(RELEASE_CONFTEST)
    pytester.makepyfile(test_gate="def test_shift10(): pass\ndef test_shift50(): pass\n")
    alluredir = pytester.path / "allure-results"
    for release in releases:
        monkeypatch.setenv("RELEASE", release)
        run_forked(pytester, f"--alluredir={alluredir}", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    return alluredir


@pytest.mark.sandbox
def test_two_releases_of_a_rehearsal_are_not_retries_of_each_other(pytester: pytest.Pytester,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    alluredir = _gate_results(pytester, monkeypatch, "v1", "v2", "v2")
    results = [json.loads(p.read_text()) for p in alluredir.glob("*-result.json")]
    by_id: dict[str, list[str]] = {}
    for result in results:
        release = next(p["value"] for p in result["parameters"] if p["name"] == "release")
        by_id.setdefault(result["historyId"], []).append(f"{result['name']}@{release}")
    # v1 and v2 of each stage apart; the two runs of v2 (a re-run) together, which is what a retry is
    assert sorted(by_id.values()) == [["test_shift10@v1"], ["test_shift10@v2", "test_shift10@v2"],
                                      ["test_shift50@v1"], ["test_shift50@v2", "test_shift50@v2"]]


@pytest.mark.sandbox
def test_apply_labels_is_a_no_op_without_alluredir(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(LABELLING_CONFTEST)
    pytester.makepyfile(test_gate="def test_labelled_at_collect(request):\n"
                                  "    assert not list(request.node.iter_markers('allure_label'))\n")
    result = run_forked(pytester, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "allure-results").exists()


def test_provider_error_prefix_is_exported_for_the_core() -> None:
    assert PROVIDER_ERROR == "provider error:"


# --- scrub: what allure-pytest wrote on its own ---------------------------------

def test_scrub_results_masks_tokens_in_traces_and_captured_output(tmp_path: Path) -> None:
    from pytest_llamadeploy.reporting.scrub import scrub_results

    token = "eyJzdWIiOiJsbGFtYSJ9.c2lnbmF0dXJlLXZhbHVl"
    trace = (f"api_url = 'http://127.0.0.1:1'\nauth = {{'Authorization': 'Bearer {token}'}}\n"
             "dsn = 'postgresql://llama:hunter22@db/x'")
    result = {"name": "test_auth", "statusDetails": {"message": "boom", "trace": trace}, "steps": [],
              "parameters": [{"name": "release", "value": "v2"}]}
    (tmp_path / "a-result.json").write_text(json.dumps(result, indent=2))
    (tmp_path / "b-attachment.txt").write_text(f"GET /x with Authorization: Bearer {token}\nstatus 200\n")
    (tmp_path / "c-attachment.png").write_bytes(b"\x89PNG" + token.encode())  # binary: left alone
    (tmp_path / "d-result.json").write_text(json.dumps({"name": "clean", "steps": []}, indent=2))
    before = (tmp_path / "d-result.json").read_text()

    changed = scrub_results(tmp_path, secrets=["s3cr3t-value"])

    assert sorted(p.name for p in changed) == ["a-result.json", "b-attachment.txt"]
    scrubbed = json.loads((tmp_path / "a-result.json").read_text())
    assert token not in json.dumps(scrubbed) and "hunter22" not in json.dumps(scrubbed)
    assert "'Bearer ***'" in scrubbed["statusDetails"]["trace"]
    assert scrubbed["parameters"] == result["parameters"]
    assert token not in (tmp_path / "b-attachment.txt").read_text()
    assert (tmp_path / "d-result.json").read_text() == before  # untouched files keep their bytes
    # only files written since the session started are rewritten
    (tmp_path / "e-attachment.txt").write_text(f"Bearer {token}")
    assert scrub_results(tmp_path, since=time.time() + 60) == []
