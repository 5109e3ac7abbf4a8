"""The bake watch's probes of the new version: one Lambda invoke of it per probe, the AWS way.

Each probe invokes the new version of the API function directly (``Qualifier=N``,
an API Gateway proxy event), as CodeDeploy's PreTraffic hooks do: on AWS and in
the sandbox alike (the sandbox's Lambda endpoint is its front door). When the
stage compares versions, each probe of the new version is mirrored on the old
one: probes add load, and load on one side only would make the new version look
slower than it is (seen in the sandbox: 1.5-3x at shift50). A probe the new
version did not answer at all is checked against the old version at once
(:func:`attribute_probe`): ``None`` means neither answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def bake_probe(context: Any, policy: Any) -> Callable[[], tuple[bool | None, str]] | None:
    """One version-targeted probe of the new API version, for the watch (None if nothing is new).

    When the stage compares versions, each probe of the new version is mirrored on
    the old one: probes add load, and load on one side only would make the new
    version look slower than it is (seen in the sandbox: 1.5-3x at shift50).
    A probe the new version did not answer at all is checked against the old
    version at once (:func:`attribute_probe`): ``None`` means neither answered.
    """
    fn = policy.service.api_function
    version = context.new_versions.get(fn)
    old = context.old_versions.get(fn)
    if not version or version == old:
        return None
    from .probe import probe_http

    targets = context.resolved_targets
    # One attempt per probe: each is a sample, and botocore must not retry a throttle into a success.
    lambda_client = context.client("lambda", max_attempts=1)
    mirror = old if "compare" in policy.stages[context.stage].suites else None

    def probe_version(v: str) -> Any:
        return probe_http(targets, policy.watch.probe_path, version=v, timeout=policy.watch.probe_timeout,
                          function=fn, lambda_client=lambda_client)

    def probe() -> tuple[bool | None, str]:
        result = probe_version(version)
        control = None
        if mirror is not None:
            control = probe_version(mirror)
        elif result.status is None and old:
            control = probe_version(old)
        return attribute_probe(result, control)

    return probe


def attribute_probe(result: Any, control: Any | None) -> tuple[bool | None, str]:
    """The watch's reading of one probe of the new version, given the old version's (or None).

    - answered: ok or failed as answered (a 5xx, a wrong release);
    - no answer, and the old version answered: the new version failed;
    - no answer from either: ``None``, the probe path failed, not the release;
    - no answer and no old version to ask: failed (nothing clears the release).
    """
    if result.status is not None or result.ok or getattr(result, "throttled", False):
        # A Lambda throttle is an answer of Lambda's: the watch counts it as a throttle.
        return result.ok, result.describe()
    if control is not None and control.status is None:
        return None, (f"{result.describe()}; the old version gave no answer either ({control.error}): "
                      "the probe path failed, not the release")
    if control is not None:
        return False, f"{result.describe()}; the old version answered HTTP {control.status}"
    return False, result.describe()
