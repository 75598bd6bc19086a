"""The evaluation's configuration: fields and their validation only (metric options checked against the
metric-group registry); recorded in config.json and checked when a run resumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .. import metrics
from .._precision import check_amp
from ..preprocess import Preprocess, input_statistics
from ..saliency import canonical, spec
from ..utils import check_int
from . import groups
from .claims import ACCURACY_MARGIN

METRIC_GROUPS = groups.group_names()  # the built-in groups (the registry: groups.GROUPS)
DEFAULT_METRICS = groups.default_groups()
TARGETS = ("labels", "predicted")  # explain the ground-truth class, or the model's prediction
MULTILABEL_TARGETS = ("top", "all")  # multi-label images: explain the top positive class, or every one
BASELINES = ("fakecam", "random")  # added to every evaluation: the scale of every metric


@dataclass
class EvalConfig:
    """Everything an evaluation depends on; recorded in results.json and checked when resuming."""

    model: str
    data: str
    out: str
    weights: str | None = None
    checkpoint: str | None = None
    stream: str | None = None
    # more streams on the same classifier, side by side: label -> stream checkpoint; each is a model of
    # its own with pooling "ca" only (its GAP is the classifier's, already evaluated)
    streams: dict = field(default_factory=dict)
    poolings: tuple[str, ...] = ("gap", "ca")
    # method names, or labelled variants with inline options: "opticam[objective=diff]"
    methods: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam")
    metrics: tuple[str, ...] = DEFAULT_METRICS
    protocol: str = "thesis"
    images: int | None = None
    batch_size: int = 8
    metric_batch: int = 64
    size: int = 224
    resize: int | None = None  # eval resize before the centre crop (default size * 256 / 224)
    seed: int = 0
    method_options: dict = field(default_factory=dict)
    metric_options: dict = field(default_factory=dict)  # metric group -> keyword options of its function
    # input statistics: a name ("imagenet", "cifar100") or explicit mean/std; by default those recorded
    # with the checkpoint, a timm model's, else ImageNet's (preprocess.input_statistics: one rule)
    normalization: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scores: str = "softmax"  # class probabilities of the metrics: "softmax", or "sigmoid" (multi-label)
    multilabel_targets: str = "top"  # multi-label data: the positive class with the highest logit, or "all"
    targets: str = "labels"  # the class explained: the label, or "predicted" (also for unlabelled data)
    class_map: str | None = None  # JSON file: dataset class -> model class index or name (data.classes)
    boxes: str | None = None  # ImageNet bounding-box XML folder
    compare: dict = field(default_factory=dict)  # label -> checkpoint of more models of the same architecture
    method_images: dict = field(default_factory=dict)  # method -> evaluate it on the first N images only
    baselines: tuple[str, ...] = BASELINES
    amp: str | None = None  # "bf16"/"fp16": run the models under autocast (castream's own steps stay fp32)
    channels_last: bool = False  # models and images in torch.channels_last
    # the accuracy claim's equivalence margin (a fraction; claims.ACCURACY_MARGIN): read by the report only,
    # so it may change between a run and its re-rendering
    accuracy_margin: float = ACCURACY_MARGIN
    # explain only the images the frozen classifier (the GAP model) classifies correctly, as thesis §1.3.4
    # evaluates explanations of correct predictions; the others are skipped, counted in the report
    correct_only: bool = False

    def __post_init__(self) -> None:
        check_amp(self.amp)
        margin = self.accuracy_margin
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 < margin < 1:
            raise ValueError(f"accuracy_margin must be a fraction in (0, 1), e.g. 0.005; got {margin!r}")
        for name in ("channels_last", "correct_only"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.correct_only and self.targets == "predicted":
            raise ValueError("correct_only compares the prediction with the label: it needs targets='labels'")
        for name in ("batch_size", "metric_batch", "size", "images", "resize"):
            if getattr(self, name) is not None or name not in ("images", "resize"):
                check_int(name, getattr(self, name))
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baseline {unknown}; expected a subset of {list(BASELINES)}")
        self.methods = tuple(dict.fromkeys([*self.methods, *self.baselines]))
        for method in self.method_options:
            if method not in self.methods:
                raise ValueError(
                    f"method_options names {method!r}, which is not among the methods {self.methods}; "
                    "an option of a method that is not evaluated would be ignored"
                )
        for method, count in self.method_images.items():
            if method not in self.methods:
                raise ValueError(
                    f"method_images names {method!r}, which is not among the methods {self.methods}"
                )
            check_int(f"method_images[{method!r}]", count)
        unknown = sorted(set(self.poolings) - {"gap", "ca"})
        if unknown:
            raise ValueError(f"unknown pooling {unknown}; expected a subset of ['gap', 'ca']")
        for metric in self.metrics:  # registered groups, or quantus:NAME (registered on first use)
            if isinstance(metric, str) and metric.startswith("quantus:"):
                from .quantus import register

                register(metric)
            groups.resolve(metric)
        self._check_metric_options()
        chosen = self.preprocess()
        if self.mean is not None:
            self.mean, self.std = chosen.mean, chosen.std
        metrics.check_scores(self.scores)
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        if self.multilabel_targets not in MULTILABEL_TARGETS:
            raise ValueError(
                f"multilabel_targets must be one of {MULTILABEL_TARGETS}, got {self.multilabel_targets!r}"
            )
        if "ca" in self.poolings and not (self.stream or self.streams):
            raise ValueError("pooling 'ca' needs a trained stream checkpoint (stream=... or streams=...)")
        if self.streams and "ca" not in self.poolings:
            raise ValueError("streams= are evaluated through their CA pooling: add 'ca' to the poolings")
        if self.protocol not in metrics.PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {list(metrics.PROTOCOLS)}")
        self._check_methods()
        self.poolings, self.metrics, self.baselines = (
            tuple(self.poolings),
            tuple(self.metrics),
            tuple(self.baselines),
        )

    def _check_methods(self) -> None:
        """Every method name or variant resolves; no two name the same variant; an option is set once."""
        seen: dict[str, str] = {}
        for method in self.methods:
            _, inline = spec(method)
            key = canonical(method)
            if key in seen:
                raise ValueError(f"methods {seen[key]!r} and {method!r} are the same method: list it once")
            seen[key] = method
            twice = sorted(set(inline) & set(self.method_options.get(method, {})))
            if twice:
                raise ValueError(f"{method!r} sets {twice} inline and again in method_options: set it once")

    def _check_metric_options(self) -> None:
        for group, options in self.metric_options.items():
            if group not in self.metrics:
                raise ValueError(
                    f"metric_options names {group!r}, which is not among the metrics {self.metrics}"
                )
            groups.GROUPS[group].check_options(options)

    def preprocess(self) -> Preprocess:
        """The input statistics, by :func:`castream.preprocess.input_statistics`."""
        return input_statistics(
            mean=self.mean,
            std=self.std,
            normalization=self.normalization,
            checkpoint=self.checkpoint,
            model=self.model,
        )[0]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def fingerprint(self) -> dict:
        """What must not change between an interrupted run and its resumption."""
        return {k: v for k, v in self.to_dict().items() if k not in ("out", "accuracy_margin")}
