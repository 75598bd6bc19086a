"""The classifier and CA-Stream recipes for the shared training loop."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import Batch
from ..metrics.recognition import mean_average_precision
from ..stream import StreamModel, check_backbone, save_stream
from ..utils import state_digest
from .loop import Recipe, TrainConfig, Trainer, all_reduce_sum


def _classification_loss(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> Tensor:
    """Cross-entropy for class indices (with ``smoothing``: label smoothing); binary cross-entropy for
    multi-hot labels (multi-label VOC)."""
    if labels.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def _gather(values: list) -> list:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, values)
        return [v for part in parts for v in part]
    return values


def classification_scores(forwards: dict, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Top-1 accuracy (or mAP for multi-hot labels) of each named forward over a sharded loader,
    reduced over processes: ``acc_<name>`` / ``map_<name>`` (plain ``acc``/``map`` for one forward)."""
    correct = torch.zeros(len(forwards) + 1, device=device)
    scores: dict[str, list] = {name: [] for name in forwards}
    labels_seen: list = []
    multilabel = False
    for batch in loader:
        images, labels = batch.images.to(device), batch.labels.to(device)
        multilabel = labels.dim() == 2
        for i, (name, forward) in enumerate(forwards.items()):
            logits = forward(images)
            if multilabel:
                scores[name].append(logits.float().cpu())
            else:
                correct[i] += (logits.argmax(1) == labels).sum()
        correct[-1] += len(images)
        if multilabel:
            labels_seen.append(labels.cpu())
    suffix = (lambda n: "") if len(forwards) == 1 else (lambda n: f"_{n}")
    if multilabel:
        labels_all = torch.cat(_gather(labels_seen))
        return {
            f"map{suffix(n)}": mean_average_precision(torch.cat(_gather(s)), labels_all)
            for n, s in scores.items()
        }
    all_reduce_sum(correct)
    return {f"acc{suffix(n)}": float(correct[i] / correct[-1].clamp(min=1)) for i, n in enumerate(forwards)}


class ClassifierRecipe(Recipe):
    """Train (from scratch or fine-tune) a whole classifier with cross-entropy (BCE for multi-hot)."""

    name = "classifier"

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        self.model, self.label_smoothing = model, label_smoothing

    def module(self) -> nn.Module:
        return self.model

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return _classification_loss(model(batch.images), batch.labels, self.label_smoothing)

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        return classification_scores({"model": model}, loader, device)


class StreamRecipe(Recipe):
    """Train only the CA-Stream of a StreamModel (thesis §3.4): backbone and classifier stay frozen in
    eval mode and their forward builds no autograd graph. Class-specific streams receive the labels.
    Validation reports accuracy through GAP and through the stream."""

    name = "stream"

    def __init__(self, model: StreamModel, label_smoothing: float = 0.0) -> None:
        if not isinstance(model, StreamModel):
            raise TypeError(
                f"train_stream expects a StreamModel (castream.attach_stream), got {type(model).__name__}"
            )
        self.model, self.label_smoothing = model, label_smoothing

    def module(self) -> nn.Module:
        return self.model

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.stream.parameters())

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        kwargs = {"labels": batch.labels} if self.model.config.class_specific else {}
        return _classification_loss(model(batch.images, **kwargs), batch.labels, self.label_smoothing)

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        forwards = {"gap": lambda x: model(x, pooling="gap"), "ca": lambda x: model(x)}
        return classification_scores(forwards, loader, device)

    def state_dict(self) -> dict:
        return self.model.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.stream.load_state_dict(state)

    def identity(self) -> dict[str, str]:
        if not hasattr(self, "_backbone"):  # frozen: hashed once
            self._backbone = state_digest(self.model.backbone)
        return {"backbone": self._backbone}

    def check_identity(self, stored: dict[str, str], where: str) -> None:
        check_backbone(stored.get("backbone"), self.model.backbone, f"the stream checkpoint {where}")


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    **options,
) -> list[dict]:
    """Train ``model`` on ``train_set``; checkpoints in ``out_dir`` and the final weights in
    ``out_dir/model.safetensors``. Returns the per-epoch history. ``options`` go to :class:`Trainer`."""
    config = config or TrainConfig()
    trainer = Trainer(
        ClassifierRecipe(model, config.label_smoothing), train_set, val_set, config, out_dir, **options
    )
    history = trainer.fit()
    if trainer.rank == 0 and trainer.epoch == trainer.config.epochs:
        from ..models import save_weights

        save_weights(model, Path(out_dir) / "model.safetensors")
    return history


def train_stream(
    model: StreamModel,
    train_set: Dataset,
    val_set: Dataset | None,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    **options,
) -> list[dict]:
    """Train the CA-Stream of ``model`` (defaults: the thesis §3.4 recipe); the final stream is saved as
    ``out_dir/stream.safetensors`` (see castream.save_stream). Returns the per-epoch history."""
    config = config or TrainConfig()
    trainer = Trainer(
        StreamRecipe(model, config.label_smoothing), train_set, val_set, config, out_dir, **options
    )
    history = trainer.fit()
    if trainer.rank == 0 and trainer.epoch == trainer.config.epochs:
        save_stream(model, Path(out_dir) / "stream.safetensors")
    return history
