"""pytest hooks of llamadeploy, and nothing else: the work lives in the modules they call.

One pytest session is one stage of one release in one environment. Without
``--env`` the plugin stays out of the way (the project's own ``pytest tests``
needs none of its options), except that it refuses to run the gate suites
without an environment.

Order on the controller (never on an xdist worker):
  configure      settings + policy validated (bad input: UsageError, exit 4)
  sessionstart   SIGTERM/SIGINT handled from here on (interrupt.py); decide + preconditions + lock +
                 ``started`` record (refused: exit 4, nothing changed)
  collection     suites the stage does not run are deselected
  runtestloop    the action (deploy / shift / promote / rollback / operation), then the bake under the watch
  tests          gate tests read the stage from the ``llama`` fixture
  sessionfinish  verdict -> rollback if needed -> ledger -> exit code (README's table: 2 interrupted,
                 3 verdict not recorded / lock lost, 5 rollback failed)
  unconfigure    the --junitxml report redacted like the Allure results; signal handlers restored
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import newhooks
from .options import Settings, add_options, get_settings, misplaced_options

pytest_plugins = ["pytest_llamadeploy.fixtures"]

SETTINGS_KEY = pytest.StashKey[Settings]()
RUNNER_KEY = pytest.StashKey[Any]()  # stage.StageRunner (imported lazily: it pulls in boto3)
INTERRUPTS_KEY = pytest.StashKey[Any]()  # interrupt.Interrupts of the controller
FAILURES_KEY = pytest.StashKey[list[str]]()
RAN_KEY = pytest.StashKey[list[int]]()
#: Gate tests passed per suite (every suite the stage lists must pass at least one).
PASSED_KEY = pytest.StashKey[dict[str, int]]()
#: The user property a gate test's reports carry its suite in (xdist forwards it to the controller).
SUITE_PROPERTY = "llamadeploy_suite"
VERDICT_KEY = pytest.StashKey[tuple[str, str]]()
#: The bake's probe checks plugins contribute, by name (bakeprobe.ProbeCheck).
PROBE_CHECKS_KEY = pytest.StashKey[dict[str, Any]]()
#: Analysis tests that failed observed only (observe.py), as "nodeid: message (why)".
OBSERVED_KEY = pytest.StashKey[list[str]]()
#: The env's policy, for the per-rule ``observe: true`` of key metrics (loaded once per process).
POLICY_KEY = pytest.StashKey[Any]()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(newhooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    try:  # the load (Locust) options live with the load runner
        from .load.options import add_options as add_load_options
    except ImportError:
        return
    add_load_options(parser.getgroup("llamadeploy"), parser)


def _gate_setup(config: pytest.Config, settings: Settings) -> Any:
    """Validate the env/stage/release and the options against the policy and its guard; return the loaded policy."""
    from .guard import guard_problems
    from .policy import PolicyError, available_envs, load_policy

    try:
        loaded = load_policy(settings.policy_dir, settings.env or "")
    except PolicyError as exc:
        raise pytest.UsageError("invalid policy:\n  " + "\n  ".join(exc.problems)) from None
    violations = guard_problems(loaded)
    if violations:
        raise pytest.UsageError(
            f"the {settings.env} policy is looser than the runbook; nothing was changed "
            f"(`llamadeploy policy check {settings.policy_dir}` lists the same):\n  " + "\n  ".join(violations))
    policy = loaded.policy
    if not settings.stage:
        raise pytest.UsageError(
            f"--env={settings.env} needs --stage; {settings.env} allows: {', '.join(policy.plan)} (plan) and "
            f"{', '.join(s for s in policy.stages if s not in policy.plan)} (operations)"
        )
    if settings.stage not in policy.stages:
        raise pytest.UsageError(
            f"--stage={settings.stage} is not a stage of {settings.env} ({loaded.files[-1]}); allowed: "
            f"{', '.join(policy.plan)} (plan) and {', '.join(s for s in policy.stages if s not in policy.plan)} "
            f"(operations). Environments: {', '.join(available_envs(settings.policy_dir))}"
        )
    action = policy.stages[settings.stage].action
    if action in ("deploy", "shift", "promote") and not settings.release:
        raise pytest.UsageError(f"--stage={settings.stage} needs --release TAG (the release being shipped, e.g. v1.2.3)")
    misplaced = misplaced_options(settings, settings.stage, {name: s.action for name, s in policy.stages.items()})
    if misplaced:
        raise pytest.UsageError("options that this stage would ignore; nothing was changed:\n  " + "\n  ".join(misplaced))
    from .guard import is_guarded

    if settings.narrowed and is_guarded(loaded) and not settings.emergency:
        suites = ", ".join(policy.stages[settings.stage].suites)
        raise pytest.UsageError(
            f"{settings.env} is guarded: {settings.stage} runs every test of its suites ({suites}), and this run "
            f"would select fewer: {'; '.join(settings.narrowed)}. Nothing was changed. Drop the selection, or, if "
            "this really is an emergency, add --emergency --reason TEXT (recorded with the stage)")
    if settings.observe:
        _check_observe(settings, policy, guarded=is_guarded(loaded))
    return loaded


def _check_observe(settings: Settings, policy: Any, guarded: bool) -> None:
    """``--observe`` applies to a stage with a watch or an analysis suite; a guarded env needs an emergency."""
    from .observe import ANALYSIS_SUITES

    stage = policy.stages[settings.stage]
    if not stage.watch and not set(stage.suites) & {"monitoring", *ANALYSIS_SUITES}:
        raise pytest.UsageError(
            f"--observe does not apply to --stage={settings.stage}: it has no watch and no analysis suite "
            f"(monitoring, {', '.join(ANALYSIS_SUITES)}), so nothing would be observed; leave it out")
    if guarded and not settings.emergency:
        raise pytest.UsageError(
            f"{settings.env} is guarded: --observe would let a breach of the runbook's rollback triggers pass "
            f"{settings.stage} without a rollback. Nothing was changed. Drop --observe (mark a single new rule "
            "`observe: true` in the policy to tune it), or, if this really is an emergency, add --emergency "
            "--reason TEXT (recorded with the stage)")


def _aws_unreadable(exc: Exception) -> str | None:
    """Why ``--plan`` could not read AWS (no credentials, no region, unreachable, refused), or None."""
    from botocore.exceptions import BotoCoreError, ClientError

    from .redact import redact

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return redact(f"AWS refused {exc.operation_name}: {error.get('Code', '?')}: {error.get('Message', '')}")
    if isinstance(exc, BotoCoreError):
        return redact(str(exc))  # an endpoint URL may carry a user:password
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--plan``: print the decision and change nothing."""
    settings = get_settings(config)
    if not settings.plan:
        return None
    if not settings.active:
        raise pytest.UsageError("--plan needs --env and --stage")
    loaded = _gate_setup(config, settings)
    _refuse_unassigned(config, settings, loaded)
    from .plan import render_plan
    from .stage import StageRunner

    try:
        runner = StageRunner(settings, loaded, config.pluginmanager.hook, out=print)
        decision = runner.decide()
    except Exception as exc:
        from .ledger import LedgerCorrupt

        if isinstance(exc, LedgerCorrupt):
            raise pytest.UsageError(f"--plan for {settings.stage} in {settings.env} refused: {exc}") from None
        why = _aws_unreadable(exc)
        if why is None:
            raise
        raise pytest.UsageError(
            f"--plan for {settings.stage} in {settings.env} needs to read the alias and the ledger, and AWS could not "
            f"be read: {why}. Configure credentials and region the standard boto3 way (AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and AWS_REGION; AWS_ENDPOINT_URL for a moto server); "
            "nothing was changed") from None
    print(render_plan(decision, loaded, runner.ledger.describe(), observe=settings.observe))
    return 0 if decision.ok else 4


def _unreadable_errors() -> tuple[type[Exception], ...]:
    """What reading the env may fail with: an unreadable ledger, AWS not answering (not a bug of ours)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from .ledger import LedgerConflict, LedgerCorrupt

    return LedgerCorrupt, LedgerConflict, BotoCoreError, ClientError, OSError


def _unreadable(runner: Any, exc: Exception) -> str:
    """A stage that could not even be decided (corrupt ledger, AWS not answering): nothing was changed."""
    from .ledger import LedgerCorrupt
    from .redact import redact

    if isinstance(exc, LedgerCorrupt):
        return f"{runner.stage} of {runner.release or '(no release)'} in {runner.env} refused: {exc}"
    why = _aws_unreadable(exc) or redact(f"{type(exc).__name__}: {exc}")
    return (f"{runner.stage} of {runner.release or '(no release)'} in {runner.env} refused; nothing was changed: "
            f"provider error while reading the env: {why}; run it again once AWS answers")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llamadeploy_suite(name): the gate suite a test belongs to (a built-in "
                                       "suite or one the policy declares under suites:)")
    settings = get_settings(config)
    config.stash[SETTINGS_KEY] = settings
    config.stash[FAILURES_KEY] = []
    config.stash[RAN_KEY] = [0]
    config.stash[PASSED_KEY] = {}
    config.stash[OBSERVED_KEY] = []
    if not settings.active or _is_worker(config):
        return
    loaded = _gate_setup(config, settings)
    _refuse_unassigned(config, settings, loaded)
    from .bakeprobe import plugin_checks

    try:  # before anything changes: a check the policy names and no plugin gives is bad input
        config.stash[PROBE_CHECKS_KEY] = plugin_checks(
            config.pluginmanager.hook.pytest_llamadeploy_probe_checks(policy=loaded.policy), loaded.policy)
    except ValueError as exc:
        raise pytest.UsageError(f"probe checks of {loaded.files[-1]}; nothing was changed:\n  "
                                + str(exc).replace("\n", "\n  ")) from None
    # Allure results from every gate run by default (allure-pytest reads this in its own configure).
    if hasattr(config.option, "allure_report_dir") and not config.option.allure_report_dir:
        config.option.allure_report_dir = str(settings.alluredir)
    from .stage import StageRunner

    tr = config.pluginmanager.get_plugin("terminalreporter")

    def out(line: str) -> None:
        if tr is not None:
            tr.write_line(line)
        else:
            print(line)

    def progress(line: str, same_line: bool) -> None:
        if tr is not None and same_line and getattr(tr, "isatty", False):
            tr.rewrite(line, erase=True)
        else:
            out(line)

    from .interrupt import Interrupts

    interrupts = config.stash[INTERRUPTS_KEY] = Interrupts()
    config.stash[RUNNER_KEY] = StageRunner(settings, loaded, config.pluginmanager.hook, out=out, progress=progress,
                                           interrupts=interrupts)
    config.pluginmanager.register(_GateObserver(config), "llamadeploy-gate-observer")
    from .notify import from_environment as webhook_from_environment

    # LLAMADEPLOY_WEBHOOK_URL set: post each stage event there (the secret URL leaves os.environ here)
    notifier = webhook_from_environment(out=out, consume=True)
    if notifier is not None:
        config.pluginmanager.register(notifier, "llamadeploy-webhook")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: tell each worker where the controller writes the stage context."""
    runner = node.config.stash.get(RUNNER_KEY, None)
    if runner is not None:
        node.workerinput["llamadeploy_run_dir"] = str(runner.run_dir)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Preconditions, lock and the ``started`` record, before xdist starts its workers."""
    runner = session.config.stash.get(RUNNER_KEY, None)
    if runner is None:
        return
    from .stage import Refused

    # From here until the verdict, SIGTERM (a cancelled CI job) and SIGINT end the stage with a rollback.
    session.config.stash[INTERRUPTS_KEY].install()
    try:
        runner.decide()
        runner.start()
    except Refused as exc:
        session.config.stash[RUNNER_KEY] = None
        raise pytest.UsageError(
            f"{runner.stage} of {runner.release or '(no release)'} in {runner.env} refused; nothing was changed:\n  "
            + "\n  ".join(exc.problems)
        ) from None
    except _unreadable_errors() as exc:
        session.config.stash[RUNNER_KEY] = None
        raise pytest.UsageError(_unreadable(runner, exc)) from None


def _suite_of(item: pytest.Item, catalogue: tuple[str, ...] | None = None) -> tuple[str | None, bool]:
    """(suite name, lives under a ``suites/`` folder); ``catalogue``: the env's suites (default: the built-in ones)."""
    from .suiteassign import MARKER, SUITES_DIR, suite_of_parts
    from .suitenames import KNOWN_SUITES

    marker = item.get_closest_marker(MARKER)
    path = Path(str(item.path))
    try:  # below the rootdir only: a folder named `suites` or `health` above the repository says nothing
        parts = path.relative_to(item.config.rootpath).parts
    except ValueError:
        parts = path.parts
    under_suites = SUITES_DIR in parts
    if marker is not None and marker.args:
        return str(marker.args[0]), under_suites
    return suite_of_parts(parts, catalogue or KNOWN_SUITES), under_suites


def _refuse_unassigned(config: pytest.Config, settings: Settings, loaded: Any) -> None:
    """A test under suites/ in no suite of the env would run in every stage: refused before anything changes."""
    from .suiteassign import suite_roots, unassigned

    roots = suite_roots(config.args, config.invocation_params.dir)
    problems = unassigned(roots, loaded.policy.suite_catalogue(), config.getini("python_files"), loaded.files[-1],
                          settings.env or "")
    if problems:
        raise pytest.UsageError("tests in no gate suite; nothing was changed:\n  " + "\n  ".join(problems))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[SETTINGS_KEY]
    if not settings.active:
        gates = [i.nodeid for i in items if all(_suite_of(i))]
        if gates:
            raise pytest.UsageError(
                f"the gate suites need an environment and a stage ({len(gates)} gate tests collected, e.g. {gates[0]}): "
                "run `pytest --env=sandbox --stage=verify` (envs are the files in policies/), "
                "or `pytest tests` for the project's own tests"
            )
        return
    from .policy import load_policy

    policy = load_policy(settings.policy_dir, settings.env or "").policy
    stage = policy.stages[settings.stage or ""]
    catalogue = policy.suite_catalogue()
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        suite, under_suites = _suite_of(item, catalogue)
        item.stash[_SUITE_KEY] = suite
        # Under suites/ and in no suite (a marker added by a hook, past _refuse_unassigned): never in every stage.
        runs = suite in stage.suites if suite is not None or under_suites else True
        (keep if runs else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Allure labels: a reviewer navigates by env (epic), stage (feature) and suite (story)."""
    settings = item.config.stash.get(SETTINGS_KEY, None)
    if settings is None or not settings.active:
        return
    from .reporting.labels import apply_labels

    versions: dict[str, str] = {}
    workerinput = getattr(item.config, "workerinput", None)
    runner = item.config.stash.get(RUNNER_KEY, None)
    if runner is not None and runner.record is not None:
        versions = runner.record.new_versions
    elif workerinput is not None:
        ctx_file = Path(workerinput.get("llamadeploy_run_dir", ".")) / "context.json"
        if ctx_file.is_file():
            import json

            versions = json.loads(ctx_file.read_text()).get("new_versions", {})
    suite = item.stash.get(_SUITE_KEY, None)
    if suite:
        item.user_properties.append((SUITE_PROPERTY, suite))
    apply_labels(item, env=settings.env or "", stage=settings.stage or "", release=settings.release or "",
                 suite=suite or "other", versions=versions)


_SUITE_KEY = pytest.StashKey[str | None]()


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed analysis test observed only (``--observe``, a rule's ``observe: true``) fails nothing (observe.py).

    ``trylast``: the innermost wrapper, so allure-pytest and every reporter see the observed outcome.
    """
    report = yield
    settings = item.config.stash.get(SETTINGS_KEY, None)
    if settings is None or not settings.active or report.when != "call" or not report.failed:
        return report
    from .observe import mark_observed, observed_only

    if POLICY_KEY not in item.config.stash:
        from .policy import load_policy

        item.config.stash[POLICY_KEY] = load_policy(settings.policy_dir, settings.env or "").policy
    why = observed_only(item, item.stash.get(_SUITE_KEY, None), settings.observe, item.config.stash[POLICY_KEY])
    if why is not None:
        mark_observed(report, why)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """The stage's action and bake, once, on the controller, before any gate test runs."""
    runner = session.config.stash.get(RUNNER_KEY, None)
    if runner is None or session.config.option.collectonly:
        return
    runner.interrupts.raise_pending()  # a signal that arrived while the lock was being taken
    runner.act()
    if runner.failure is None:
        from .bakeprobe import bake_probe

        plugins = session.config.stash.get(PROBE_CHECKS_KEY, {})
        runner.bake(probe=bake_probe(runner.context, runner.policy, plugins) if runner.stage_policy.watch else None)
    runner.step = "gate suites"
    if runner.failure is not None:
        raise session.Failed(runner.failure)


class _GateObserver:
    """Counts gate outcomes on the controller (xdist forwards workers' reports here).

    A registered object rather than a module-level hook because the report
    carries no config to keep the counts on.
    """

    def __init__(self, config: pytest.Config):
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from .observe import observed_of

        if report.when == "call" or (report.when == "setup" and report.failed):
            self.config.stash[RAN_KEY][0] += 1
        observed = observed_of(report) if report.when == "call" else None
        if observed is not None:
            self.config.stash[OBSERVED_KEY].append(observed)
        if report.when == "call" and (report.passed or observed is not None):  # an observed analysis ran
            suite = str(dict(report.user_properties).get(SUITE_PROPERTY) or "")
            if suite:
                passed = self.config.stash[PASSED_KEY]
                passed[suite] = passed.get(suite, 0) + 1
        if report.failed:
            crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
            message = crash.message.splitlines()[0] if crash is not None and crash.message else f"{report.when} failed"
            self.config.stash[FAILURES_KEY].append(f"{report.nodeid}: {message}")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    runner = session.config.stash.get(RUNNER_KEY, None)
    if runner is None or runner.record is None or runner.is_final():
        return
    interrupts = runner.interrupts
    interrupted = None
    if interrupts.received:
        interrupted = f"{interrupts.first} received during the {runner.step}"
    elif exitstatus == pytest.ExitCode.INTERRUPTED:
        interrupted = "interrupted"
    elif exitstatus == pytest.ExitCode.INTERNAL_ERROR:
        interrupted = "internal error"
    # Shielded: further signals are recorded, never allowed to abort the rollback or the verdict.
    with interrupts.shield(raise_after=False):
        try:
            status, reason = runner.finish(session.config.stash[FAILURES_KEY], session.config.stash[RAN_KEY][0],
                                           interrupted, passed_by_suite=session.config.stash[PASSED_KEY],
                                           observed_tests=session.config.stash[OBSERVED_KEY])
        finally:
            interrupts.disarm()
        session.config.stash[VERDICT_KEY] = (status, reason)
        from .evidence import write_stage_result

        try:
            write_stage_result(runner, getattr(session.config.option, "allure_report_dir", None))
        except Exception as exc:  # the report must never change the verdict or hide it
            runner.out(f"llamadeploy: writing the Allure stage result failed: {exc!r}")
    code = runner.exit_code()
    if code is not None:
        session.exitstatus = code
    elif status != "passed" and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif status == "passed" and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    verdict = config.stash.get(VERDICT_KEY, None)
    runner = config.stash.get(RUNNER_KEY, None)
    if verdict is None or runner is None:
        return
    status, reason = verdict
    details = runner.record.details if runner.record else {}
    observed = (details.get("observed") or {}).get("breaches") or []
    terminalreporter.section("llamadeploy verdict", sep="=", green=status == "passed" and not observed,
                             yellow=status == "paused" or (status == "passed" and bool(observed)),
                             red=status not in ("passed", "paused"), bold=True)
    terminalreporter.write_line(f"{runner.env} {runner.stage} {runner.release or ''}: {status.upper()}")
    if reason:
        terminalreporter.write_line(f"reason: {reason}")
    if observed:
        terminalreporter.write_line(
            f"!!! {len(observed)} BREACH(ES) OBSERVED ONLY ({details['observed']['mode']}): NOT ACTED ON - no "
            "rollback, the stage was not failed by them. Enforced, they would have failed it:", yellow=True, bold=True)
        for line in observed[:20]:
            terminalreporter.write_line(f"  observed: {line}", yellow=True)
    elif details.get("observed"):
        terminalreporter.write_line(f"observed only ({details['observed']['mode']}): no breach seen")
    if status == "paused":
        commands = (details.get("awaiting") or {}).get("commands") or {}
        terminalreporter.write_line(f"PAUSED (exit 6): awaiting a decision; every later stage of {runner.env} is "
                                    f"refused until: `{commands.get('promote')}` or `{commands.get('rollback')}`",
                                    yellow=True, bold=True)
    scope = (runner.record.details.get("release_scope") or {}) if runner.record else {}
    if scope.get("unchanged"):
        terminalreporter.write_line(f"partial release: shifts {', '.join(scope['shifted'])}, leaves "
                                    f"{', '.join(scope['unchanged'])} ({scope['summary']})")
    after = runner.record.weights_after if runner.record else {}
    for fn, state in after.items():
        weights = ", ".join(f"v{v} {w:.0%}" for v, w in state.get("weights", {}).items())
        terminalreporter.write_line(f"  {fn}: alias -> v{state['version']}" + (f" + {weights}" if weights else ""))
    if runner.verdict_unrecorded:
        terminalreporter.write_line(f"VERDICT NOT RECORDED in the ledger: {runner.verdict_unrecorded}", red=True)
    if runner.lock_unreleased:
        terminalreporter.write_line(f"LOCK NOT RELEASED: {runner.lock_unreleased}", red=True)
    terminalreporter.write_line(f"ledger: {runner.ledger.describe()}; artifacts: {runner.run_dir}")


def pytest_unconfigure(config: pytest.Config) -> None:
    settings = config.stash.get(SETTINGS_KEY, None)
    xmlpath = getattr(config.option, "xmlpath", None)
    if settings is not None and settings.active and xmlpath and not _is_worker(config):
        from .reporting.scrub import scrub_junit_xml

        runner = config.stash.get(RUNNER_KEY, None)
        scrub_junit_xml(xmlpath, secrets=_known_secrets(runner))
    interrupts = config.stash.get(INTERRUPTS_KEY, None)
    if interrupts is not None:
        interrupts.uninstall()
    for key in (SETTINGS_KEY, RUNNER_KEY, FAILURES_KEY, RAN_KEY, PASSED_KEY, VERDICT_KEY, INTERRUPTS_KEY,
                PROBE_CHECKS_KEY, OBSERVED_KEY, POLICY_KEY):
        if key in config.stash:
            del config.stash[key]


def _known_secrets(runner: Any) -> list[str]:
    if runner is None:
        return []
    from .evidence import _known_secrets as from_targets

    return from_targets(runner)
