"""Evaluation: the metric-group registry (``groups``), the configuration (``config``), the runner (a grid
of model x pooling x method, image-major, sharded, resumable, distributed), the run folder's store, the
results aggregated from it and the report rendered from them."""

from .config import DEFAULT_METRICS, METRIC_GROUPS, EvalConfig
from .report import write_report
from .results import StoredRun
from .runner import Runner, load_classifier

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_GROUPS",
    "EvalConfig",
    "Runner",
    "StoredRun",
    "load_classifier",
    "write_report",
]
