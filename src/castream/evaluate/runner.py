"""The evaluation runner: model x pooling x saliency method over a dataset, every metric per image.

Work is cut into fixed batches of images (a seeded selection of the evaluation split, in order). Batch
``b`` belongs to process ``b % world``, so every image is computed in the same batch as in a
single-process run and gets bit-identical values. The loop is image-major: each batch is read and
decoded once (one batch ahead, in a background thread), its clean logits are computed once per model and
pooling, and it then goes through every cell (pooling x method) that still needs it; the host work (CPU
metrics, shard records) runs one step behind (``pipeline``). Each finished cell-batch appends its per-image
records to the process's shard file (``<out>/shards/<cell>.rank<r>.jsonl``, see ``store``); a re-run of
the same command skips finished cell-batches, so an interrupted run (Ctrl-C, kill) loses no finished
image. Rank 0 renders the report from the stored files when every process is done.
"""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, fields
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import metrics
from .._precision import autocast
from .._scorer import Scorer
from ..backbones import is_vit, min_input_size
from ..data import collate, eval_transform
from ..data.classes import label_map, model_class_names, read_class_map
from ..data.registry import is_multilabel, open_dataset
from ..models import build_model, is_factory, load_weights, output_classes
from ..saliency import spec
from ..stream import StreamModel, load_stream
from ..train.loop import distributed
from ..utils import atomic_write, count_flops, count_parameters, state_digest
from . import figures, groups
from .config import (  # noqa: F401  (re-exported: the runner's names before the split)
    BASELINES,
    DEFAULT_METRICS,
    METRIC_GROUPS,
    MULTILABEL_TARGETS,
    TARGETS,
    EvalConfig,
)
from .pipeline import HostLane, prefetched
from .plan import Plan, selection
from .results import RUN_INFO
from .store import CellRecords, Store, cell_name, read_config, run_id

GRID_IMAGES = 6  # images of the report's saliency grid, whose maps are saved as they are computed


def load_classifier(name: str, classes: int, weights: str | None, checkpoint: str | None) -> nn.Module:
    """The classifier to explain as it is: pretrained, a factory's own, or built by name with ``classes``
    outputs (seeded random weights), then local weights if given. Its head is never replaced."""
    if weights or is_factory(name):
        model = build_model(name, weights=weights)
    else:
        model = build_model(name, num_classes=classes)
    return load_weights(model, checkpoint) if checkpoint else model


def _difference(key: str, stored, current) -> str:
    """One changed setting of :meth:`Runner.claim`, in words."""
    if key != "weights":
        return f"{key}: {stored!r} -> {current!r}"
    if not isinstance(stored, dict):
        return "the weights' digests are not recorded (a folder of an earlier castream)"
    changed = [label for label in current if stored.get(label) != current[label]]
    return "; ".join(
        f"the weights of {label} changed ({str(stored.get(label))[:15]}... -> {current[label][:15]}...: "
        "a checkpoint or stream replaced at the same path?)"
        for label in changed
    )


class Runner:
    """``Runner(config).run()`` evaluates every cell and writes the report into ``config.out``."""

    def __init__(
        self,
        config: EvalConfig,
        *,
        progress: bool = True,
        log=print,
        device: str | torch.device | None = None,
    ) -> None:
        """``device``: where the models run (default: the process's CUDA device under torchrun or when
        present, else the CPU)."""
        self.config, self.progress, self.log = config, progress, log
        self.out = Path(config.out)
        self.rank, self.world, self.device = distributed()
        if device is not None:
            self.device = torch.device(device)
        self.preprocess = config.preprocess()
        options = {"boxes": config.boxes} if config.boxes else {}
        stats = {"mean": self.preprocess.mean, "std": self.preprocess.std}
        self.dataset = open_dataset(
            config.data, "eval", eval_transform(config.size, resize=config.resize, **stats), **options
        )
        self.multilabel = is_multilabel(self.dataset)
        self.indices = selection(len(self.dataset), config.images, config.seed)
        for group in groups.ordered(config.metrics):
            reason = group.requires(self._first_target(), self.multilabel) if group.requires else None
            if reason:
                raise ValueError(f"metric group {group.name!r} cannot run on {config.data}: {reason}")
        classes = len(self.dataset.classes)
        backbone = load_classifier(config.model, classes, config.weights, config.checkpoint)
        self.labels_map, self.labelled = self._label_map(backbone)
        if config.correct_only and (self.multilabel or not self.labelled):
            raise ValueError(
                "correct_only needs single-label data whose classes are the model's (it compares the "
                f"prediction with the label); {config.data} is "
                + ("multi-label" if self.multilabel else "not labelled with the model's classes")
            )
        model = load_stream(backbone, config.stream) if config.stream else backbone
        self.models = {config.model: model}
        for label, path in config.streams.items():  # more streams on the same frozen classifier
            self._add_model(label, load_stream(backbone, path))
        for label, checkpoint in config.compare.items():
            self._add_model(label, load_classifier(config.model, classes, None, checkpoint))
        # what the results are computed with: the weights' content, not the paths they were read from
        self.weights = {label: state_digest(m) for label, m in self.models.items()}
        self.plan = Plan(
            indices=self.indices,
            poolings={
                label: [
                    p
                    for p in config.poolings
                    if (p == "gap" and label not in config.streams)
                    or (p == "ca" and isinstance(m, StreamModel))
                ]
                for label, m in self.models.items()
            },
            methods=list(config.methods),
            batch_size=config.batch_size,
            method_images=dict(config.method_images),
            seed=config.seed,
        )
        memory = torch.channels_last if config.channels_last else torch.preserve_format
        for m in self.models.values():
            m.to(self.device, memory_format=memory).eval()
        self.store = Store(self.out, self.rank, log)
        self.store.selection = set(self.indices)
        self._figure_indices: list[int] | None = None
        self._scorers: dict[tuple[str, str], Scorer] = {}
        self.decodes = 0  # images read and decoded for the explained batches (not the adversarial hosts)
        self.host_decodes = 0  # images read and decoded as adversarial hosts
        minimum = min_input_size(model)
        if config.size < minimum:
            raise ValueError(
                f"size {config.size} is smaller than {config.model} accepts: its last stage has stride "
                f"{minimum}, so images must be at least {minimum} pixels"
            )

    def _add_model(self, label: str, model: nn.Module) -> None:
        if label in self.models:
            raise ValueError(f"model label {label!r} is used twice (the model's name, streams= and compare=)")
        self.models[label] = model

    def _label_map(self, model: nn.Module) -> tuple[Tensor | None, bool]:
        """(dataset label -> model class, or None when they agree; whether labels are known to the model).
        Classes that do not match are an error unless ``targets="predicted"``, which then explains the
        prediction and reports no accuracy."""
        if self.multilabel:
            return None, True
        if not self.dataset.classes:  # images without labels (images:DIR)
            if self.config.targets != "predicted":
                raise ValueError(
                    f"{self.config.data} has no labels: explain the predicted class (targets='predicted')"
                )
            return None, False
        class_map = read_class_map(self.config.class_map) if self.config.class_map else None
        try:
            found = label_map(list(self.dataset.classes), model, output_classes(model), class_map)
        except ValueError:
            if self.config.targets != "predicted" or class_map is not None:
                raise
            return None, False
        if found is not None:
            self.log(f"dataset classes -> model classes: {dict(zip(self.dataset.classes, found))}")
        return (torch.tensor(found) if found is not None else None), True

    def class_name(self, cls: int) -> str:
        """The name of model class ``cls``: the dataset's when its labels are the model's, else the
        model's own (``data.classes.model_class_names``), else the index."""
        if self.labels_map is None and self.labelled:
            return str(self.dataset.classes[cls])
        model = next(iter(self.models.values()))
        names = model_class_names(getattr(model, "backbone", model), output_classes(model))
        return names[cls] if names else str(cls)

    def _first_target(self) -> dict:
        item = self.dataset[self.indices[0]] if self.indices else None
        return item[2] if item is not None else {}

    def map_size(self) -> tuple[str, int, int] | None:
        """(layer, h, w) of the layer the first layer-based method explains on the first model, from a
        forward on the meta device; None when no method reads a layer."""
        from ..backbones import probe_shapes

        label = next(iter(self.models))
        for method in self.config.methods:
            if spec(method)[0].uses_layer:
                pooling = self.plan.poolings[label][0]
                name = self.build_method(method, label, pooling).layers[0][0]
                try:
                    (shape,), _ = probe_shapes(
                        self.models[label], [name], (1, 3, self.config.size, self.config.size)
                    )
                except ValueError:  # not a 4-D map (a ViT token sequence)
                    return None
                return name, shape[2], shape[3]
        return None

    def logits(self, label: str, pooling: str, images: Tensor) -> Tensor:
        """Checked float logits of model ``label`` through ``pooling`` (a Hugging Face output's ``logits``),
        one forward per batch (the run's batch size is at most its metric batch)."""
        return self.scorer(label, pooling).call(images).float()

    def forward_kwargs(self, label: str, pooling: str) -> dict:
        return {"pooling": pooling} if isinstance(self.models[label], StreamModel) else {}

    # -- store -----------------------------------------------------------------------------------------
    @property
    def identity(self) -> str | None:
        return self.store.identity

    @property
    def warnings(self) -> list[str]:
        return self.store.warnings

    def records(self, cell: str) -> CellRecords:
        """The valid records of ``cell`` (:meth:`Store.records`)."""
        return self.store.records(cell)

    def finished(self, cell: str) -> set[int]:
        """Image indices of ``cell`` with a valid record: what a resumed run skips."""
        return self.records(cell).done

    def fingerprint(self) -> dict:
        """The configuration and the content digest of every model's weights (its stream included)."""
        return {**self.config.fingerprint(), "weights": self.weights}

    def claim(self) -> None:
        """Claim the output folder for this run (it must be new or empty: castream never overwrites files
        it did not write), or check that it holds this run's results; sets the run's identity."""
        path = self.out / "config.json"
        current = self.fingerprint()
        if self.rank == 0 and not path.exists():
            if self.out.exists() and any(self.out.iterdir()):
                found = sorted(p.name for p in self.out.iterdir())
                raise FileExistsError(
                    f"{self.out} holds files that are not a castream evaluation ({', '.join(found[:5])}"
                    f"{', ...' if len(found) > 5 else ''}; no config.json); choose a new or empty --out"
                )
            atomic_write(path, lambda tmp: tmp.write_text(json.dumps(current, indent=1)))
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        stored = read_config(self.out)
        # a setting added after the stored run was made counts as its default
        defaults = {f.name: f.default for f in fields(EvalConfig) if f.default is not MISSING}
        differences = [
            _difference(k, stored.get(k, defaults.get(k)), v)
            for k, v in current.items()
            if stored.get(k, defaults.get(k)) != v
        ]
        if differences:
            raise ValueError(
                f"{self.out} holds results of another evaluation ({'; '.join(differences)}); use another "
                f"--out, or delete {self.out} to recompute"
            )
        self.store.identity = run_id(stored)

    def build_method(self, name: str, label: str, pooling: str, model: nn.Module | None = None):
        """The saliency method ``name`` explaining model ``label`` through ``pooling``, with its options
        (on ``model`` instead when given: a copy of it, e.g. the randomized model of a Quantus metric)."""
        cls, inline = spec(name)
        options = {**self.config.method_options.get(name, {}), **inline}
        if cls.masks_input:
            options.setdefault("preprocess", self.preprocess)
        model = self.models[label] if model is None else model
        return cls(model, forward_kwargs=self.forward_kwargs(label, pooling), **options)

    # -- work ----------------------------------------------------------------------------------------------
    def _read(self, indices: list[int]) -> tuple:
        """The host side of :meth:`_load` (safe in a loader thread): (kept indices, batch or None,
        skipped records)."""
        kept, items, skipped = [], [], []
        for i in indices:
            self.decodes += 1
            item, reason = self.dataset.try_item(i)
            if item is None:
                skipped.append({"index": i, "reason": reason})
            else:
                kept.append(i)
                items.append(item)
        batch = collate(items) if items else None
        if batch is not None and self.device.type == "cuda":
            batch = batch._replace(images=batch.images.pin_memory())
        return kept, batch, skipped

    def _to_device(self, read: tuple):
        """(kept indices, images, labels, targets, skipped) on the runner's device, in its memory format."""
        kept, batch, skipped = read
        if batch is None:
            return kept, None, None, [], skipped
        images = batch.images.to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch.labels if self.labels_map is None else self.labels_map[batch.labels]
        return kept, images, labels.to(self.device, non_blocking=True), batch.targets, skipped

    def _load(self, indices: list[int]):
        """(kept indices, images, labels, targets, skipped): unreadable images are left out and returned
        as ``{"index", "reason"}`` records (images is None when none is readable)."""
        return self._to_device(self._read(indices))

    @staticmethod
    def _leave_out(batch: tuple, drop: list[bool], reason: str, skipped: list) -> tuple:
        """(indices, images, labels, meta) without the images flagged in ``drop``, each recorded in
        ``skipped`` with ``reason``; images is None when none is left."""
        indices, images, labels, meta = batch
        if not any(drop):
            return batch
        skipped.extend({"index": i, "reason": reason} for i, d in zip(indices, drop) if d)
        keep = [j for j, d in enumerate(drop) if not d]
        if not keep:
            return [], None, None, []
        return [indices[j] for j in keep], images[keep], labels[keep], [meta[j] for j in keep]

    def _without_unlabelled(self, batch: tuple, skipped: list) -> tuple:
        """Multi-label images whose annotation has no object have no class to explain: they are left out
        and recorded as skipped (they were explained as class 0 before)."""
        empty = (batch[2] == 0).all(dim=1).tolist()
        reason = "its annotation has no object, so there is no class to explain"
        return self._leave_out(batch, empty, reason, skipped)

    def _correct(self, label: str, batch: tuple, skipped: list, clean: dict) -> tuple:
        """The images the GAP model ``label`` classifies correctly (``correct_only``); the others are
        recorded as skipped; a stream of ``streams=`` is judged by the classifier it runs on."""
        indices, images, labels, _ = batch
        label = self.config.model if label in self.config.streams else label
        with torch.no_grad(), autocast(self.device, self.config.amp):
            wrong = (self._clean(clean, label, "gap", indices, images).argmax(1) != labels).tolist()
        reason = "misclassified by the GAP model (correct predictions only)"
        return self._leave_out(batch, wrong, reason, skipped)

    def _targets(self, labels: Tensor, logits: Tensor) -> Tensor:
        """The ground-truth class (the prediction with ``targets="predicted"``); for multi-label images the
        positive class with the highest logit."""
        if self.config.targets == "predicted":
            return logits.argmax(dim=1)
        if labels.dim() == 1:
            return labels
        return logits.masked_fill(labels == 0, float("-inf")).argmax(dim=1)

    def adversarial_hosts(self, index: int, target: int, cases: int) -> list[int]:
        """The ``cases`` host images of image ``index``: evaluated images that do not hold the target class
        (when the dataset's labels tell), see :meth:`Plan.hosts`."""
        return self.plan.hosts(
            index, cases, lambda c: not self._holds(c, target), f"host images without class {target}"
        )

    def _holds(self, index: int, cls: int) -> bool:
        """Whether the dataset labels image ``index`` with class ``cls`` (False when it keeps no labels)."""
        samples = getattr(self.dataset, "samples", None)
        if samples is None or not self.labelled:
            return False
        label = samples[index].label
        if isinstance(label, int) and self.labels_map is not None:
            label = int(self.labels_map[label])
        return bool(label[cls]) if isinstance(label, Tensor) else label == cls

    def figure_indices(self) -> list[int]:
        """The report grid's images: up to GRID_IMAGES of the selection's first ones, those holding
        another class than the label first (fixed by the selection, so the run and the report agree)."""
        if self._figure_indices is None:

            def crowded(index: int) -> bool:
                item = self.dataset[index]
                labels = item[2].get("box_labels") if item is not None else None
                label = torch.as_tensor(item[1]) if item is not None else None
                if label is not None and label.dim() == 1:  # multi-hot: several positive classes
                    return int(label.count_nonzero()) > 1
                return labels is not None and bool((labels != label).any())

            candidates = self.indices[: 4 * GRID_IMAGES]
            self._figure_indices = sorted(candidates, key=lambda i: not crowded(i))[:GRID_IMAGES]
        return self._figure_indices

    def _hosts(self, indices: list[int], targets: Tensor, cases: int) -> Tensor:
        """(B, cases, C, H, W) host images (see :meth:`adversarial_hosts`)."""
        wanted = [h for i, t in zip(indices, targets.tolist()) for h in self.adversarial_hosts(i, t, cases)]
        order = sorted(set(wanted))
        self.host_decodes += len(order)
        kept, images, _, _, skipped = self._to_device(self._read(order))
        self.decodes -= len(order)  # counted apart (host_decodes)
        if skipped:
            raise ValueError(
                f"adversarial verification: host images {[s['index'] for s in skipped]} are unreadable"
            )
        position = {index: k for k, index in enumerate(kept)}
        return images[[position[h] for h in wanted]].unflatten(0, (len(indices), cases))

    def evaluate_accuracy(self, label: str, pooling: str) -> None:
        """The accuracy cell of model ``label`` through ``pooling`` alone (see :meth:`evaluate`)."""
        self.evaluate([(label, pooling, "accuracy")])

    def evaluate_cell(self, label: str, pooling: str, method_name: str) -> None:
        """One method cell alone (see :meth:`evaluate`)."""
        self.evaluate([(label, pooling, method_name)])

    def evaluate(self, cells: list[tuple[str, str, str]] | None = None) -> None:
        """Every cell of ``cells`` (default: the accuracy cells, then every method cell), image-major: each
        of this process's batches is read and decoded once, and goes through every cell that lacks it. The
        device computes a batch's maps and model-based metrics under the configured precision; the host work
        (CPU metrics, the shard record) runs one step behind in a background thread, and loading one batch
        ahead."""
        from tqdm import tqdm

        plan = self.plan
        cells = [*plan.accuracy_cells(), *plan.cells()] if cells is None else cells
        done = {cell: self.finished(cell_name(*cell)) for cell in cells}
        wanted = {cell: plan.wanted(cell) for cell in cells}
        todo = []
        for indices in plan.batches_of(self.rank, self.world):
            need = [c for c in cells if (mine := wanted[c].intersection(indices)) and not mine <= done[c]]
            if need:
                todo.append((indices, need))
        needed = dict.fromkeys(c for _, need in todo for c in need if c[2] != "accuracy")
        methods = {c: self.build_method(c[2], c[0], c[1]) for c in needed}
        seconds = dict.fromkeys(cells, 0.0)
        bar = tqdm(total=len(todo), desc="evaluate", disable=not self.progress or self.rank or not todo)
        with bar, HostLane() as host:
            for (_, need), read in zip(todo, prefetched(self._read, [i for i, _ in todo])):
                batch = self._to_device(read)
                clean: dict = {}  # (label, pooling, images kept) -> clean logits, shared by the cells
                for cell in need:
                    start = time.perf_counter()
                    if cell[2] == "accuracy":
                        self._accuracy_batch(cell, batch, clean, host)
                    else:
                        self._method_batch(cell, methods[cell], wanted[cell], batch, clean, host)
                    seconds[cell] += time.perf_counter() - start
                bar.update()
        self.store.sync()
        if self.rank == 0:
            for cell in cells:
                if cell[2] != "accuracy" and seconds[cell]:
                    count = len(wanted[cell])
                    self.log(f"{cell[0]} {cell[1]} {cell[2]}: {count} images, {seconds[cell]:.1f} s")

    def _clean(self, clean: dict, label: str, pooling: str, kept: list[int], images: Tensor) -> Tensor:
        """The clean logits of these images, computed once per batch, model, pooling and image subset."""
        key = (label, pooling, tuple(kept))
        if key not in clean:
            with torch.no_grad(), autocast(self.device, self.config.amp):
                clean[key] = self.logits(label, pooling, images)
        return clean[key]

    def _accuracy_batch(self, cell, batch, clean: dict, host: HostLane) -> None:
        label, pooling, _ = cell
        name = cell_name(*cell)
        indices, images, labels, _, skipped = batch
        if images is None:
            host.submit(partial(self.store.append, name, {"images": [], "skipped": skipped}))
            return
        logits = self._clean(clean, label, pooling, indices, images)
        if self.multilabel:
            rows = [
                {"index": i, "scores": s, "labels": y}
                for i, s, y in zip(indices, logits.tolist(), labels.tolist())
            ]
        elif not self.labelled:  # the data's classes are not the model's: no accuracy
            p = logits.softmax(1).amax(1).tolist()
            rows = [{"index": i, "predicted_probability": q} for i, q in zip(indices, p)]
        else:
            correct = metrics.accuracy(logits, labels).tolist()
            p = logits.softmax(1).gather(1, labels[:, None]).squeeze(1).tolist()
            rows = [
                {"index": i, "accuracy": float(c), "probability": q} for i, c, q in zip(indices, correct, p)
            ]
        host.submit(partial(self.store.append, name, {"images": rows, "skipped": skipped}))

    def _method_batch(self, cell, method, wanted: set[int], batch, clean: dict, host: HostLane) -> None:
        """One cell on one batch: the images of the batch the cell evaluates (a prefix of the batch, as
        ``method_images`` takes the selection's first images), exactly as if read on their own."""
        label, pooling, _ = cell
        name, config = cell_name(*cell), self.config
        indices, images, labels, meta, skipped = batch
        count = sum(i in wanted for i in indices)
        skipped = [e for e in skipped if e["index"] in wanted]
        if images is not None and count < len(indices):
            indices, images, labels, meta = indices[:count], images[:count], labels[:count], meta[:count]
        if images is not None and count == 0:
            images = None
        if images is not None and self.multilabel:
            kept = self._without_unlabelled((indices, images, labels, meta), skipped)
            indices, images, labels, meta = kept
        if images is not None and config.correct_only:
            kept = self._correct(label, (indices, images, labels, meta), skipped, clean)
            indices, images, labels, meta = kept
        if images is None:
            host.submit(partial(self.store.append, name, {"images": [], "skipped": skipped}))
            return
        scorer = self.scorer(label, pooling)
        with autocast(self.device, config.amp):
            logits = self._clean(clean, label, pooling, indices, images)
            targets = self._targets(labels, logits)
            pairs = self.multilabel and config.multilabel_targets == "all"
            if pairs:  # one row per (image, positive class)
                rows_of, targets = labels.nonzero(as_tuple=True)
                images, logits = images[rows_of], logits[rows_of]
                meta = [meta[i] for i in rows_of.tolist()]
                indices = [indices[i] for i in rows_of.tolist()]
            start = time.perf_counter()
            maps = method(images, targets)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            rebuild = partial(self.build_method, cell[2], label, pooling)
            values = self._metrics(
                "device", scorer, method, maps, images, indices, targets, logits, meta, rebuild
            )
        values = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in values.items()}
        host_side = {"maps": maps.cpu(), "targets": targets.cpu(), "logits": logits.cpu(), "scorer": scorer}
        record = {"skipped": skipped, "seconds": seconds}
        host.submit(partial(self._finish, name, indices, values, host_side, meta, pairs, record))

    def _finish(
        self,
        cell: str,
        indices: list[int],
        values: dict,
        host_side: dict,
        meta: list[dict],
        pairs: bool,
        record: dict,
    ) -> None:
        """Host side of one batch: the host metrics, then one shard record of per-image rows."""
        maps, targets, logits = host_side["maps"], host_side["targets"], host_side["logits"]
        scorer = host_side["scorer"]
        values.update(self._metrics("host", scorer, None, maps, None, indices, targets, logits, meta))
        order = list(values)
        arrays = {
            k: v.numpy() if v.dtype in (torch.float32, torch.float64) else v.float().numpy()
            for k, v in values.items()
            if isinstance(v, Tensor) and v.dim() == 2
        }
        columns = {
            k: v.tolist() if isinstance(v, Tensor) else v for k, v in values.items() if k not in arrays
        }
        targets = targets.tolist()
        figures.save_maps(self.store, cell, self.figure_indices(), indices, targets, maps)
        rows = []
        for j, index in enumerate(indices):
            row = {"index": index}
            if pairs:
                row["class"] = targets[j]
            row.update((name, column[j]) for name, column in columns.items())
            rows.append(row)
        record = {"images": rows, **record, "batch": len(indices), "columns": order}
        self.store.append(cell, record, arrays)

    def scorer(self, label: str, pooling: str) -> Scorer:
        """How the run calls model ``label`` through ``pooling``: its score kind and metric batch size."""
        if (label, pooling) not in self._scorers:
            self._scorers[label, pooling] = Scorer(
                self.models[label],
                forward_kwargs=self.forward_kwargs(label, pooling),
                score=self.config.scores,
                batch_size=self.config.metric_batch,
            )
        return self._scorers[label, pooling]

    def _context(
        self, scorer, method, images, maps, indices, targets, logits, meta, group, rebuild=None
    ) -> groups.Context:
        return groups.Context(
            scorer=scorer,
            method=method,
            images=images,
            maps=maps,
            targets=targets,
            logits=logits,
            indices=indices,
            meta=meta,
            preprocess=self.preprocess,
            protocol=self.config.protocol,
            seed=self.config.seed,
            options=group.options(self.config.metric_options.get(group.name, {})),
            hosts=lambda cases: self._hosts(indices, targets, cases),
            rebuild=rebuild,
        )

    def _metrics(
        self, side: str, scorer, method, maps, images, indices, targets, logits, meta, rebuild=None
    ) -> dict:
        """Every configured group of ``side`` on one batch, in registry order: {key: per-image values}."""
        out = {}
        for group in groups.ordered(self.config.metrics):
            if group.side == side:
                ctx = self._context(
                    scorer, method, images, maps, indices, targets, logits, meta, group, rebuild
                )
                out.update(group.run(ctx))
        return out

    def run_info(self) -> dict:
        """What the report needs besides the shards, known when the run starts (``run.json``): the
        selection, the cells, each model's cost, the class names, the explained layer's map size."""
        size = self.config.size
        cost = {}
        for label, model in self.models.items():
            for pooling in self.plan.poolings[label]:
                counted = model.backbone if isinstance(model, StreamModel) and pooling == "gap" else model
                flops = count_flops(model, (1, 3, size, size), **self.forward_kwargs(label, pooling))
                cost[f"{label}/{pooling}"] = {
                    "parameters": count_parameters(counted, trainable_only=False),
                    "gflops": flops / 1e9,
                }
        model = next(iter(self.models.values()))
        try:
            names = [self.class_name(c) for c in range(output_classes(getattr(model, "backbone", model)))]
        except ValueError:  # a model castream cannot describe: classes by index
            names = None
        return {
            "selection": self.indices,
            "multilabel": self.multilabel,
            "poolings": self.plan.poolings,
            "cost": cost,
            "class_names": names,
            "map_size": self.map_size(),
            "preprocess": {"mean": list(self.preprocess.mean), "std": list(self.preprocess.std)},
            # the claims' scope: CNN or ViT per model
            "families": {label: "vit" if is_vit(m) else "cnn" for label, m in self.models.items()},
            # the stream variants' claims (block, placement, class-specific query) read their settings
            "streams": {
                label: {
                    "block": m.config.block,
                    "start": m.config.start,
                    "taps": len(m.config.taps),
                    "class_specific": m.config.class_specific,
                }
                for label, m in self.models.items()
                if isinstance(m, StreamModel)
            },
        }

    def run(self) -> dict | None:
        """Evaluate every cell (resuming), then rank 0 writes and returns the report."""
        from .report import write_report
        from .results import StoredRun

        self.claim()
        if self.rank == 0:
            self.store.write_json(RUN_INFO, self.run_info())
            figures.save_inputs(self)
        self.evaluate()
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if self.rank != 0:
            return None
        margin = self.config.accuracy_margin  # a report setting: this run's, over the folder's first one
        return write_report(StoredRun(self.out, log=self.log, accuracy_margin=margin))
