"""Interpretability metrics: per-image tensors of shape (B,), aggregated separately (``aggregate``).

Fractions in [0, 1] everywhere; percentages are applied only by reports.
"""

from . import aggregate
from ._common import SCORES, check_scores, probability
from .aggregate import Aggregator, paired_bootstrap, paired_test, paired_tests
from .causal import (
    PROTOCOLS,
    Curves,
    aopc,
    deletion,
    insertion,
    protocol_step,
    region_masks,
    saliency_rank,
    step_counts,
    step_rule,
)
from .discrimination import class_discrimination
from .imputation import ROAD_ORDERS, ROAD_PERCENTILES, impute, road, road_keep
from .localization import (
    box_accuracy,
    box_accuracy_from_ious,
    localization,
    pointing_hits,
    predicted_box,
    sm_probabilities,
    threshold_ious,
    unit_interpretability,
)
from .recognition import (
    BOX_STUDY,
    accuracy,
    average_precision,
    box_study,
    drop_gain_increase,
    mean_average_precision,
    recognition,
)
from .robustness import adcc, adversarial_verification, fading_rate, max_sensitivity, pearson
from .sanity import sanity_check, spearman

__all__ = [
    "BOX_STUDY",
    "PROTOCOLS",
    "ROAD_ORDERS",
    "ROAD_PERCENTILES",
    "SCORES",
    "Aggregator",
    "Curves",
    "accuracy",
    "adcc",
    "adversarial_verification",
    "aggregate",
    "aopc",
    "average_precision",
    "box_accuracy",
    "box_accuracy_from_ious",
    "box_study",
    "check_scores",
    "class_discrimination",
    "deletion",
    "drop_gain_increase",
    "fading_rate",
    "impute",
    "insertion",
    "localization",
    "max_sensitivity",
    "mean_average_precision",
    "paired_bootstrap",
    "paired_test",
    "paired_tests",
    "pearson",
    "pointing_hits",
    "predicted_box",
    "probability",
    "protocol_step",
    "recognition",
    "region_masks",
    "road",
    "road_keep",
    "saliency_rank",
    "sanity_check",
    "sm_probabilities",
    "spearman",
    "step_counts",
    "step_rule",
    "threshold_ious",
    "unit_interpretability",
]
