"""Evaluation runner (grid of model x pooling x method, sharded, resumable, distributed) and reports."""

from .report import write_report
from .runner import DEFAULT_METRICS, METRIC_GROUPS, EvalConfig, Runner, load_classifier

__all__ = ["DEFAULT_METRICS", "METRIC_GROUPS", "EvalConfig", "Runner", "load_classifier", "write_report"]
