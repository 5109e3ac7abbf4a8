"""Notifiers: plugins of the ``pytest_llamadeploy_notify`` hookspec (newhooks.py) that ship with llamadeploy."""

from pytest_llamadeploy.notify.webhook import (
    URL_ENV,
    WebhookNotifier,
    build_payload,
    from_environment,
    kind_of,
)

__all__ = ["URL_ENV", "WebhookNotifier", "build_payload", "from_environment", "kind_of"]
