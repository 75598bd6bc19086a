"""The metric-group registry: each group of per-image metrics the runner can compute, defined once.

A :class:`MetricGroup` declares its per-image columns (key, title, unit, direction, whether GAP vs CA
compares it, the report table it belongs to, its dataset-level reducer), its run function, the function
whose keyword options users may set, and whether it runs on the device (model forwards, one batch at a
time) or the host (CPU work on the batch's maps, one batch behind the device). The runner, the stored
results, the report, the claims and the CLI read this registry and nothing else, so a group registered
with :func:`register_group` is computed, stored, aggregated, reported and compared with no other edit.

A group's run function gets a :class:`Context` (the cell's :class:`castream.Scorer`, its saliency method,
the batch's images, maps, targets and clean logits, ...) and returns ``{key: (B,) or (B, m) tensor}``: its
columns' values and its ``stored`` extras (curves, per-host cases), which derived columns are built from
when a run's records are read back.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from .._scorer import Scorer
from ..data import class_boxes
from ..preprocess import Preprocess

SIDES = ("device", "host")
# keywords the runner sets itself: users cannot set them as metric options
RESERVED_OPTIONS = (
    "preprocess",
    "batch_size",
    "forward_kwargs",
    "protocol",
    "return_curves",
    "seed",
    "output",
    "normalize",
    "scores",
    "logits",
    "order",  # ROAD's: the group computes MoRF, LeRF and their combination
)


@dataclass(frozen=True)
class Table:
    """A table of the report: its title, and optionally its columns in order (default: the columns that
    name it, in registration order). A table is shown when a column that names it has values."""

    name: str
    title: str
    keys: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Column:
    """One per-image metric: ``key`` in the records, ``title`` in the report, ``percent`` (reported x100),
    ``lower_is_better`` (None: descriptive), ``compared`` (GAP vs CA, paired bootstrap), ``table`` (the
    report table's name), ``reducer`` (the dataset-level statistic of the rows; None: the mean), and
    ``derived`` (computed from other stored values when the records are read, not by the run function)."""

    key: str
    title: str
    percent: bool = True
    lower_is_better: bool | None = False
    compared: bool = False
    table: str | None = None
    reducer: Callable[[Tensor], float] | None = None
    derived: bool = False


@dataclass
class Context:
    """What a group's run function gets for one batch of one cell (host groups get CPU tensors)."""

    scorer: Scorer  # the cell's model and pooling, the run's score kind and metric batch size
    method: object  # the cell's saliency method
    images: Tensor
    maps: Tensor
    targets: Tensor
    logits: Tensor  # the clean images' logits (float32)
    indices: list[int]
    meta: list[dict]  # each image's target dict (boxes, masks)
    preprocess: Preprocess
    protocol: str
    seed: int
    options: dict  # the group's options: the user's, over the group's own defaults
    hosts: Callable[[int], Tensor] | None = None  # cases -> (B, cases, C, H, W) host images
    rebuild: Callable | None = None  # model -> the cell's method on that model (a randomized copy, ...)


@dataclass(frozen=True)
class MetricGroup:
    """A group of per-image metrics (see the module docstring). ``options_of``: the function whose
    keyword-only parameters users may set (``EvalConfig.metric_options[name]``), the runner's own keywords
    aside; ``own_options``: integer options the run function handles itself, with their defaults;
    ``stored``: extra keys the run function returns for derived columns; ``curves``: keys of per-image
    curves (B, steps), which the results keep as their mean over the images; ``derive``: builds
    the derived columns from a record's stored arrays; ``requires``: ``(first image's target dict,
    multilabel) -> reason`` when the data cannot support the group, else None; ``default``: in the
    default metrics."""

    name: str
    columns: tuple[Column, ...]
    run: Callable[[Context], dict[str, Tensor]]
    side: str = "device"
    options_of: Callable | None = None
    own_options: dict = field(default_factory=dict)
    stored: tuple[str, ...] = ()
    curves: tuple[str, ...] = ()
    derive: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    requires: Callable[[dict, bool], str | None] | None = None
    default: bool = False

    def option_names(self) -> list[str]:
        """The options users may set."""
        names = []
        if self.options_of is not None:
            parameters = inspect.signature(self.options_of).parameters
            names = [
                k for k, v in parameters.items() if v.kind == v.KEYWORD_ONLY and k not in RESERVED_OPTIONS
            ]
        return names + list(self.own_options)

    def check_options(self, options: dict) -> None:
        """Refuse options the group does not take, and non-integer values of its own options."""
        from ..utils import check_int

        allowed = self.option_names()
        if not allowed and options:
            takers = [g.name for g in GROUPS.values() if g.option_names()]
            raise ValueError(f"metric group {self.name!r} takes no options; these do: {takers}")
        for key in options:
            if key not in allowed:
                raise ValueError(f"{self.name} has no option {key!r}; it takes {allowed}")
        for key in self.own_options:
            if key in options:
                check_int(f"{self.name}.{key}", options[key])

    def options(self, given: dict) -> dict:
        """The run function's options: the group's defaults, then the user's."""
        return {**self.own_options, **given}


GROUPS: dict[str, MetricGroup] = {}  # name -> group, in execution order (device groups, then host ones)
TABLES: dict[str, Table] = {}  # name -> table, in the report's order


def register_table(table: Table) -> Table:
    if table.name in TABLES:
        raise ValueError(f"a report table named {table.name!r} is already registered")
    TABLES[table.name] = table
    return table


def register_group(group: MetricGroup) -> MetricGroup:
    """Add ``group`` to the registry (checked: a new name, new column keys, a known side and tables)."""
    if not isinstance(group, MetricGroup):
        raise TypeError(f"expected a MetricGroup, got {type(group).__name__}")
    if group.name in GROUPS:
        raise ValueError(f"a metric group named {group.name!r} is already registered")
    if group.side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {group.side!r}")
    taken = {c.key: g.name for g in GROUPS.values() for c in g.columns}
    for column in group.columns:
        if column.key in taken:
            raise ValueError(f"column {column.key!r} of {group.name!r} is already {taken[column.key]!r}'s")
        if column.table is not None and column.table not in TABLES:
            raise ValueError(f"column {column.key!r} names table {column.table!r}; known: {list(TABLES)}")
        if "_case" in column.key:
            raise ValueError(f"column keys may not contain '_case' (per-host columns), got {column.key!r}")
    GROUPS[group.name] = group
    return group


def unregister_group(name: str) -> None:
    """Remove a group (tests, and users replacing a built-in group)."""
    GROUPS.pop(name)


def ordered(names) -> list[MetricGroup]:
    """The groups named, in execution order: device groups, then host ones, each in registration order."""
    chosen = [g for g in GROUPS.values() if g.name in set(names)]
    return [g for side in SIDES for g in chosen if g.side == side]


def group_names() -> tuple[str, ...]:
    return tuple(GROUPS)


def resolve(name: str) -> MetricGroup:
    """The registered group ``name`` (``quantus:NAME`` groups are registered by the configuration:
    castream.evaluate.quantus.register), or a clear error."""
    if name not in GROUPS:
        raise ValueError(f"unknown metric {name!r}; expected one of {list(GROUPS)} or quantus:NAME")
    return GROUPS[name]


def default_groups() -> tuple[str, ...]:
    return tuple(g.name for g in GROUPS.values() if g.default)


def columns() -> dict[str, Column]:
    """Every column by key, in registration order."""
    return {c.key: c for g in GROUPS.values() for c in g.columns}


def column(key: str) -> Column:
    """The column of ``key``; a per-host column ``<key>_case<j>`` takes its mean's, titled "... case j"."""
    found = columns()
    if key in found:
        return found[key]
    base, _, case = key.rpartition("_case")
    if base in found and case.isdigit():
        c = found[base]
        return Column(key, f"{c.title} case {case}", c.percent, c.lower_is_better, False, c.table, c.reducer)
    raise KeyError(f"no metric column {key!r}")


def table_keys(name: str) -> tuple[str, ...]:
    """The columns of report table ``name``, in order."""
    table = TABLES[name]
    if table.keys is not None:
        return table.keys
    return tuple(c.key for c in columns().values() if c.table == name)


def compared_keys() -> tuple[str, ...]:
    """The columns compared GAP vs CA, in the report's table order."""
    order = [k for name in TABLES for k in table_keys(name)] + list(columns())
    return tuple(k for k in dict.fromkeys(order) if columns().get(k) and columns()[k].compared)


def reducers(keys) -> dict[str, Callable]:
    """The dataset-level reducer of every key of ``keys`` that has one."""
    out = {}
    for key in keys:
        try:
            reducer = column(key).reducer
        except KeyError:
            continue
        if reducer is not None:
            out[key] = reducer
    return out


def stored_keys() -> set[str]:
    """Keys the run functions store that are neither columns nor curves (derived columns' inputs)."""
    return {k for g in GROUPS.values() for k in g.stored}


def curve_keys() -> set[str]:
    return {k for g in GROUPS.values() for k in g.curves}


def derive(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``values`` (a record's stored arrays) with every group's derived columns added."""
    out = dict(values)
    for group in GROUPS.values():
        if group.derive is not None:
            out.update(group.derive(out))
    return out


# -- the built-in groups -----------------------------------------------------------------------------------
for _table in (
    Table(
        "interpretability", "Interpretability metrics (thesis Table 3.1 layout; I−D: SA-CAM's overall AUC)"
    ),
    Table("localization", "Localization metrics (thesis Table 2.6 layout)"),
    Table(
        "discrimination", "Class discrimination (castream's own metric; masks of every class in the image)"
    ),
    Table(
        "box-study",
        "Bounding-box study (thesis Table 2.5 layout; S: the method's map, B: its class's boxes)",
        tuple(
            f"{short}_{region}" if region else short
            for short in ("ad", "ag", "ai")
            for region in (None, "inside", "outside", "box", "complement")
        ),
    ),
    Table("more", "More metrics (thesis Table 2.3 layout)"),
    Table("quantus", "Quantus metrics (run by Quantus on castream's maps, aggregated by castream)"),
    Table(
        "road",
        "ROAD (Rong et al. 2022: the most / least relevant pixels removed by noisy linear imputation, "
        "score change averaged over the percentiles)",
    ),
    Table(
        "adversarial",
        "Adversarial verification (SA-CAM §4.6, Tables 4–5: the key area pasted into images of other "
        "classes)",
    ),
):
    register_table(_table)


def _on_maps(metric: Callable, ctx: Context, **extra):
    """``metric`` (a metric of the maps that forwards perturbed images) on the batch, with the clean
    logits, the run's input statistics and the group's options."""
    return metric(
        ctx.scorer,
        ctx.images,
        ctx.maps,
        ctx.targets,
        preprocess=ctx.preprocess,
        logits=ctx.logits,
        **extra,
        **ctx.options,
    )


def _recognition(ctx: Context) -> dict[str, Tensor]:
    r = _on_maps(metrics.recognition, ctx)
    return {"ad": r["drop"], "ag": r["gain"], "ai": r["increase"]}


def _causal(kind: str) -> Callable[[Context], dict[str, Tensor]]:
    def run(ctx: Context) -> dict[str, Tensor]:
        auc, curves = _on_maps(getattr(metrics, kind), ctx, protocol=ctx.protocol, return_curves=True)
        return {kind: auc, f"{kind}_curve": curves.probabilities.round(decimals=5)}

    return run


def _overall(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """SA-CAM §4.5's "overall" AUC per image: insertion − deletion."""
    if "insertion" in values and "deletion" in values:
        return {"overall": values["insertion"] - values["deletion"]}
    return {}


def _aopc(ctx: Context) -> dict[str, Tensor]:
    return {"aopc": _on_maps(metrics.aopc, ctx, seed=ctx.seed)}


def _max_sensitivity(ctx: Context) -> dict[str, Tensor]:
    return {
        "max_sensitivity": metrics.max_sensitivity(
            ctx.method, ctx.images, ctx.targets, seed=ctx.seed, **ctx.options
        )
    }


def _adcc(ctx: Context) -> dict[str, Tensor]:
    a = metrics.adcc(
        ctx.method,
        ctx.scorer,
        ctx.images,
        ctx.targets,
        preprocess=ctx.preprocess,
        logits=ctx.logits,
        **ctx.options,
    )
    return {"adcc": a["adcc"], "coherency": a["coherency"], "complexity": a["complexity"]}


def _adversarial(ctx: Context) -> dict[str, Tensor]:
    options = dict(ctx.options)
    hosts = ctx.hosts(options.pop("cases"))
    adv = metrics.adversarial_verification(
        ctx.scorer, ctx.images, ctx.maps, hosts, ctx.targets, seed=ctx.seed, logits=ctx.logits, **options
    )
    return {
        "adversarial": adv["accuracy"],
        "key_area": adv["area"],
        "adversarial_cases": adv["cases"],
        "fading": torch.stack([adv["accuracy"], adv["clean"]], dim=1),
    }


def _per_host(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """SA-CAM Tables 4–5: the accuracy and the fading rate of each host ("case") apart."""
    if "adversarial_cases" not in values:
        return {}
    cases, out = values["adversarial_cases"], {}
    for j in range(cases.shape[1]):
        out[f"adversarial_case{j + 1}"] = cases[:, j]
        out[f"fading_case{j + 1}"] = np.stack([cases[:, j], values["fading"][:, 1]], axis=1)
    return out


def _discrimination(ctx: Context) -> dict[str, Tensor]:
    classes = torch.stack([t["classes"] for t in ctx.meta]).to(ctx.maps.device)
    return metrics.class_discrimination(ctx.maps, classes, ctx.targets)


def _needs_class_masks(first: dict, multilabel: bool) -> str | None:
    if multilabel or "classes" not in first:
        return "it needs per-class masks (the synthetic benchmark)"
    return None


def _box_study(ctx: Context) -> dict[str, Tensor]:
    boxes = [class_boxes(t, c) for t, c in zip(ctx.meta, ctx.targets.tolist())]
    study = metrics.box_study(
        ctx.scorer, ctx.images, ctx.maps, boxes, ctx.targets, preprocess=ctx.preprocess, logits=ctx.logits
    )
    return {
        f"{short}_{region}": study[f"{name}_{region}"]
        for name, short in (("drop", "ad"), ("gain", "ag"), ("increase", "ai"))
        for region in metrics.BOX_STUDY
    }


def _localization(ctx: Context) -> dict[str, Tensor]:
    boxes = [class_boxes(t, c) for t, c in zip(ctx.meta, ctx.targets.tolist())]
    probabilities = metrics.sm_probabilities(
        ctx.scorer, ctx.images, ctx.maps, ctx.targets, logits=ctx.logits, **ctx.options
    )
    loc = metrics.localization(ctx.maps, boxes, ctx.targets, ctx.logits.argmax(1), probabilities)
    out = {k: v for k, v in loc.items() if k != "valid"}
    out["boxacc"] = metrics.threshold_ious(ctx.maps, boxes)
    return out


def _road(ctx: Context) -> dict[str, Tensor]:
    """ROAD's MoRF and LeRF (Rong et al.; metrics.road) on the model's input tensor, as pytorch-grad-cam."""
    out = {
        f"road_{order}": metrics.road(
            ctx.scorer,
            ctx.images,
            ctx.maps,
            ctx.targets,
            order=order,
            seed=ctx.seed,
            logits=ctx.logits,
            **ctx.options,
        )
        for order in ("morf", "lerf")
    }
    return {**out, "road_combined": (out["road_lerf"] - out["road_morf"]) / 2}


_BOX_REGIONS = (("box", "S:=B"), ("complement", "S:=I∖B"), ("inside", "B∩S"), ("outside", "S∖B"))

for _group in (
    MetricGroup(
        "recognition",
        (
            Column("ad", "AD", lower_is_better=True, compared=True, table="interpretability"),
            Column("ag", "AG", compared=True, table="interpretability"),
            Column("ai", "AI", compared=True, table="interpretability"),
        ),
        _recognition,
        options_of=metrics.recognition,
        default=True,
    ),
    MetricGroup(
        "insertion",
        (Column("insertion", "I", compared=True, table="interpretability"),),
        _causal("insertion"),
        options_of=metrics.insertion,
        curves=("insertion_curve",),
        default=True,
    ),
    MetricGroup(
        "deletion",
        (
            Column("deletion", "D", lower_is_better=True, compared=True, table="interpretability"),
            Column("overall", "I−D", compared=True, table="interpretability", derived=True),
        ),
        _causal("deletion"),
        options_of=metrics.deletion,
        curves=("deletion_curve",),
        derive=_overall,
        default=True,
    ),
    MetricGroup("aopc", (Column("aopc", "AOPC", table="more"),), _aopc, options_of=metrics.aopc),
    MetricGroup(
        "max-sensitivity",
        (Column("max_sensitivity", "MS", percent=False, lower_is_better=True, table="more"),),
        _max_sensitivity,
        options_of=metrics.max_sensitivity,
    ),
    MetricGroup(
        "adcc",
        (
            Column("adcc", "ADCC", table="more"),
            Column("coherency", "Coherency", table="more"),
            Column("complexity", "Complexity", lower_is_better=True, table="more"),
        ),
        _adcc,
        options_of=metrics.adcc,
    ),
    MetricGroup(
        "adversarial",
        (
            Column("adversarial", "Acc_adv", table="adversarial"),
            Column(
                "fading", "Fading", lower_is_better=True, table="adversarial", reducer=metrics.fading_rate
            ),
            Column("key_area", "Key area", lower_is_better=None, table="adversarial"),
        ),
        _adversarial,
        options_of=metrics.adversarial_verification,
        own_options={"cases": 3},
        stored=("adversarial_cases",),
        derive=_per_host,
    ),
    MetricGroup(
        "discrimination",
        (
            Column("discrimination", "CD", compared=True, table="discrimination"),
            Column("energy_target", "E_c", table="discrimination"),
            Column("energy_other", "E_o", lower_is_better=True, table="discrimination"),
            Column("sp_target", "SP_c", compared=True, table="discrimination"),
            Column("sp_other", "SP_o", lower_is_better=True, table="discrimination"),
        ),
        _discrimination,
        requires=_needs_class_masks,
    ),
    MetricGroup(
        "box-study",
        tuple(
            Column(f"{short}_{region}", f"{title} {name}", lower_is_better=lower, table="box-study")
            for short, title, lower in (("ad", "AD", True), ("ag", "AG", False), ("ai", "AI", False))
            for region, name in _BOX_REGIONS
        ),
        _box_study,
    ),
    MetricGroup(
        "road",
        (
            Column("road_morf", "ROAD MoRF", lower_is_better=True, compared=True, table="road"),
            Column("road_lerf", "ROAD LeRF", compared=True, table="road"),
            Column("road_combined", "ROAD", compared=True, table="road"),
        ),
        _road,
        options_of=metrics.road,
    ),
    MetricGroup(
        "localization",
        (
            Column("om", "OM", lower_is_better=True, table="localization"),
            Column("le", "LE", lower_is_better=True, table="localization"),
            Column("f1", "F1", table="localization"),
            Column("boxacc", "BA", table="localization", reducer=metrics.box_accuracy_from_ious),
            Column("sp", "SP", compared=True, table="localization"),
            Column("ep", "EP", table="localization"),
            Column("sm", "SM", percent=False, lower_is_better=True, table="localization"),
        ),
        _localization,
        options_of=metrics.sm_probabilities,  # SM's p^c: "crop" (Dabkowski & Gal) or "clean"
        default=True,
    ),
):
    register_group(_group)
