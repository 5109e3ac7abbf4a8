"""Allure evidence for gate runs: labels, attachments, plots, categories, the stage verdict, the HTML report.

Everything here is cheap to import; allure, matplotlib and the Allure CLI load
only inside the functions that need them.
"""

from pytest_llamadeploy.reporting.attach import Attachment
from pytest_llamadeploy.reporting.categories import (
    CATEGORIES,
    INCONCLUSIVE,
    PROBE_FAILED,
    PROVIDER_ERROR,
    ROLLBACK_TRIGGERED,
    THRESHOLD_BREACHED,
    classify,
    threshold_message,
)
from pytest_llamadeploy.reporting.environment import write_environment
from pytest_llamadeploy.reporting.labels import allure_active, apply_labels
from pytest_llamadeploy.reporting.plots import plot_series
from pytest_llamadeploy.reporting.stage_result import record_stage

__all__ = [
    "CATEGORIES",
    "INCONCLUSIVE",
    "PROBE_FAILED",
    "PROVIDER_ERROR",
    "ROLLBACK_TRIGGERED",
    "THRESHOLD_BREACHED",
    "Attachment",
    "allure_active",
    "apply_labels",
    "classify",
    "plot_series",
    "record_stage",
    "threshold_message",
    "write_environment",
]
