"""One training loop for every recipe: AMP, gradient accumulation, DDP, atomic checkpoints, exact resume.

Determinism. Each training sample's augmentation is a function of ``(seed, epoch, index)`` alone
(:class:`SeededDataset`), and each epoch's order is a permutation drawn from ``seed + epoch``
(:class:`GlobalBatches`). A global batch is split over processes and accumulation steps the same way
whatever their number, so a run on N processes computes the same gradients as one process, and a run
resumed from a checkpoint continues exactly where the interrupted one stopped (mid-epoch included).

Under ``torchrun`` the loop initializes ``torch.distributed`` itself (NCCL on CUDA, gloo on CPU); only
rank 0 shows progress, logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .._precision import autocast, check_amp
from ..data.datasets import Batch, collate
from ..utils import atomic_write, temporary_name

# Settings that may differ between an interrupted run and its resumption.
# what a training run writes in its folder (atomic_write's temporary files of them are its own too)
TRAINING_FILES = ("checkpoint.pt", "log.jsonl", "model.safetensors", "stream.safetensors")
RESUMABLE_CHANGES = {"epochs", "workers", "checkpoint_every", "max_steps", "compile"}


@dataclass
class TrainConfig:
    """A training recipe's settings; the defaults are the CA-Stream recipe of thesis §3.4."""

    epochs: int = 90
    batch_size: int = 256  # global batch: all processes and accumulation steps together
    device_batch: int | None = None  # per process and step (default: batch_size / world size)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    milestones: tuple[int, ...] = (30, 60)  # epochs at which the learning rate is multiplied by gamma
    gamma: float = 0.1
    optimizer: str = "sgd"  # "sgd" (momentum, weight decay) or "adamw"
    schedule: str = "multistep"  # "multistep" (milestones, per epoch) or "onecycle" (per step, peak lr)
    amp: str | None = None  # "bf16" or "fp16" autocast (CUDA); None = full precision
    compile: bool = False
    seed: int = 0
    workers: int | str = "auto"  # data-loading processes, "auto" = min(8, CPU count)
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    max_steps: int | None = None  # stop after N optimizer steps in total (for interruption tests)
    # cross-entropy label smoothing (torchvision's recipe for its V2 ImageNet weights uses 0.1)
    label_smoothing: float = 0.0
    # linear warm-up over the first N epochs, per optimizer step from lr 0 (weiaicunzai/pytorch-cifar100's
    # WarmUpLR: step k of K runs at lr * k / K); multistep schedules only, every milestone after it
    warmup_epochs: int = 0
    extra: dict = field(default_factory=dict)  # recipe-specific settings, recorded in checkpoints

    def __post_init__(self) -> None:
        resolve_workers(self.workers)
        check_amp(self.amp)
        if self.optimizer not in ("sgd", "adamw") or self.schedule not in ("multistep", "onecycle"):
            raise ValueError(
                f"optimizer must be sgd/adamw and schedule multistep/onecycle, got "
                f"{self.optimizer!r}, {self.schedule!r}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"need epochs >= 1, batch_size >= 1, lr > 0; got {self.epochs}, {self.batch_size}, {self.lr}"
            )
        self.milestones = tuple(int(m) for m in self.milestones)
        if self.warmup_epochs < 0 or (
            self.warmup_epochs
            and (self.schedule != "multistep" or any(m <= self.warmup_epochs for m in self.milestones))
        ):
            raise ValueError(
                f"warmup_epochs must be >= 0, with the multistep schedule and every milestone after it; "
                f"got {self.warmup_epochs} with {self.schedule!r} and milestones {self.milestones}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Recipe:
    """What is trained and how: subclasses define the module, its trainable parameters, the loss of a
    batch, validation and what a checkpoint stores."""

    name = "recipe"
    # whether loss() or validate() read the batch's boxes and class maps; when not, castream datasets are
    # loaded without them (no class-map PNG decoded, no box or mask transformed)
    reads_annotations = False

    def module(self) -> nn.Module:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module().parameters() if p.requires_grad]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimize, optionally with named terms to log (per-epoch means)."""
        raise NotImplementedError

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return self.module().state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module().load_state_dict(state)

    def identity(self) -> dict[str, str]:
        """What a checkpoint of this recipe records and a resumption must match, besides the config (the
        frozen weights a stream is trained on)."""
        return {}

    def check_identity(self, stored: dict[str, str], where: str) -> None:
        """Refuse to resume the checkpoint at ``where`` when its recorded identity differs (nothing by
        default)."""


def distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device), initializing the process group under torchrun if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (SplitMix64 steps)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``i`` of epoch ``e`` draws its random augmentation from
    ``seed(seed, e, i)``: independent of workers, processes and resumption."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, self.epoch, index))
            return self.dataset[index]


class GlobalBatches:
    """Per-process index lists for one epoch: a seeded permutation cut into global batches; each global
    batch is cut into ``accumulate`` micro-steps of ``world * device_batch`` samples, and every process
    takes its slice. The last incomplete global batch is dropped."""

    def __init__(
        self,
        size: int,
        global_batch: int,
        device_batch: int,
        rank: int,
        world: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
    ) -> None:
        self.order = torch.randperm(size, generator=torch.Generator().manual_seed(_mix(seed, epoch))).tolist()
        self.steps = size // global_batch
        self.global_batch, self.device_batch, self.rank, self.world = global_batch, device_batch, rank, world
        self.accumulate = global_batch // (device_batch * world)
        self.start_step = start_step

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accumulate

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            chunk = self.order[step * self.global_batch : (step + 1) * self.global_batch]
            for micro in range(self.accumulate):
                part = chunk[
                    micro * self.world * self.device_batch : (micro + 1) * self.world * self.device_batch
                ]
                yield part[self.rank * self.device_batch : (self.rank + 1) * self.device_batch]


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...``: each image exactly once over all processes (no padding)."""

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, size, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def all_reduce_sum(values: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _bare(dataset: Dataset | None) -> Dataset | None:
    """A castream dataset's view without boxes and class maps (any other dataset as it is)."""
    without = getattr(dataset, "without_annotations", None)
    return without() if callable(without) else dataset


def resolve_workers(workers: int | str) -> int:
    """Data-loading processes: an int >= 0, or ``"auto"`` = min(8, CPU count)."""
    if workers == "auto":
        return min(8, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 or 'auto', got {workers!r}")
    return workers


class Trainer:
    """``Trainer(recipe, train_set, val_set, config, out_dir).fit()`` -> per-epoch history.

    ``resume=True`` continues from ``out_dir/checkpoint.pt`` (an error if the config differs in anything
    but epochs/workers/checkpointing). Writes ``checkpoint.pt`` (atomic) and ``log.jsonl`` (one JSON
    line per epoch) in ``out_dir``.
    """

    def __init__(
        self,
        recipe: Recipe,
        train_set: Dataset,
        val_set: Dataset | None,
        config: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
        collate_fn: Callable = collate,
    ) -> None:
        self.recipe, self.config, self.out_dir = recipe, config, Path(out_dir)
        if not recipe.reads_annotations:
            train_set, val_set = _bare(train_set), _bare(val_set)
        self.train_set, self.val_set = SeededDataset(train_set, config.seed), val_set
        self.resume, self.progress, self.log, self.collate_fn = resume, progress, log, collate_fn
        self.rank, self.world, self.device = distributed()
        device_batch = config.device_batch or config.batch_size // self.world
        if device_batch < 1 or config.batch_size % (device_batch * self.world):
            raise ValueError(
                f"global batch {config.batch_size} is not a multiple of {self.world} processes x "
                f"device batch {device_batch}"
            )
        self.device_batch = device_batch
        if len(train_set) < config.batch_size:
            raise ValueError(
                f"the training set has {len(train_set)} images, fewer than one batch ({config.batch_size})"
            )
        self.checkpoint_path = self.out_dir / "checkpoint.pt"

    # -- setup ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        config = self.config
        module = self.recipe.module().to(self.device)
        self.model = module
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        if config.compile:
            self.model = torch.compile(self.model)
        params = self.recipe.parameters()
        if not params:
            raise ValueError(f"recipe {self.recipe.name!r} has no trainable parameter")
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params,
                lr=config.lr,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
                nesterov=config.nesterov,
            )
        else:
            self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        if config.schedule == "multistep":
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, list(config.milestones), config.gamma
            )
        else:
            steps = config.epochs * (len(self.train_set) // config.batch_size)
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, config.lr, total_steps=steps, pct_start=0.2
            )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.epoch, self.step_in_epoch, self.global_step, self.history = 0, 0, 0, []
        self._new_epoch()

    def _warm_up(self) -> None:
        """Set the warm-up lr of the coming optimizer step from the global step (so a resumed run gets
        the same values), and restore the scheduled lr at the first step after the warm-up."""
        total = self.config.warmup_epochs * (len(self.train_set) // self.config.batch_size)
        if total and self.global_step <= total:
            factor = self.global_step / total
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor

    def _new_epoch(self) -> None:
        """Reset what an epoch's log line accumulates: loss/sample/skip sums, extra terms, the starting lr.
        Checkpointed, so a run resumed mid-epoch writes the same log line as an uninterrupted one."""
        self.totals = torch.zeros(3, device=self.device)  # loss sum, samples, skipped
        self.logged: dict[str, Tensor] = {}  # size-weighted sums of the recipe's extra loss terms
        self.epoch_lr = self.optimizer.param_groups[0]["lr"]

    def _autocast(self):
        return autocast(self.device, self.config.amp)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _save(self) -> None:
        # every rank's running sums, summed (a collective: all ranks call _save); rank 0 stores them
        running = {
            "totals": all_reduce_sum(self.totals.clone()).cpu(),
            "logged": {k: all_reduce_sum(v.clone()).cpu() for k, v in sorted(self.logged.items())},
            "lr": self.epoch_lr,
        }
        if self.rank != 0:
            return
        state = {
            "running": running,
            "recipe": self.recipe.name,
            "model": self.recipe.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "rng": _rng_state(self.device),
            "config": self.config.to_dict(),
            "identity": self.recipe.identity(),
            "history": self.history,
        }
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def _load(self) -> None:
        if not self.checkpoint_path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {self.checkpoint_path}")
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        if state.get("recipe") != self.recipe.name:
            raise ValueError(
                f"{self.checkpoint_path} is a {state.get('recipe')!r} checkpoint, not {self.recipe.name!r}"
            )
        stored, current = state["config"], self.config.to_dict()
        differences = [
            f"{k}: {stored.get(k)!r} -> {v!r}"
            for k, v in current.items()
            if k not in RESUMABLE_CHANGES and stored.get(k) != v
        ]
        if differences:
            raise ValueError(
                f"cannot resume {self.checkpoint_path} with a different config: {'; '.join(differences)}"
            )
        if current["schedule"] == "onecycle" and stored.get("epochs") != current["epochs"]:
            raise ValueError(
                f"cannot resume {self.checkpoint_path} with {current['epochs']} epochs instead of "
                f"{stored.get('epochs')}: a onecycle schedule is laid out over the run's total steps from "
                "its first step, so it cannot be extended or shortened; start a new run (or use the "
                "multistep schedule, which can be extended)"
            )
        self.recipe.check_identity(state.get("identity", {}), str(self.checkpoint_path))
        try:
            self.recipe.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"{self.checkpoint_path} does not match this model: {err}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.history = state["global_step"], state["history"]
        running = state.get("running")
        if running is not None:  # rank 0 continues the sums of every rank; the others start from zero
            keep = self.rank == 0
            self.totals = running["totals"].to(self.device) * keep
            self.logged = {k: v.to(self.device) * keep for k, v in running["logged"].items()}
            self.epoch_lr = running["lr"]
        torch.set_rng_state(state["rng"]["cpu"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)

    def _claim(self) -> None:
        """A new run needs a new or empty folder: a finished or interrupted run there is continued with
        ``resume``, and files castream did not write are never overwritten."""
        found = sorted(p.name for p in self.out_dir.iterdir()) if self.out_dir.is_dir() else []
        leftover = re.compile("|".join(temporary_name(n) for n in TRAINING_FILES))
        for name in [n for n in found if leftover.fullmatch(n)]:  # a write killed before its rename
            (self.out_dir / name).unlink()
            found.remove(name)
        if self.checkpoint_path.exists():
            raise FileExistsError(
                f"{self.out_dir} holds a training run ({self.checkpoint_path.name}); pass --resume "
                "(resume=True) to continue or extend it, or choose another --out"
            )
        if found:
            raise FileExistsError(
                f"{self.out_dir} holds files that are not a castream training run "
                f"({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}); choose a new or empty --out"
            )

    def _write_log(self) -> None:
        """``log.jsonl``: one line per finished epoch, rewritten atomically from the history (which the
        checkpoint holds), so the log never lacks or repeats an epoch of the checkpoint."""
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        atomic_write(self.out_dir / "log.jsonl", lambda tmp: tmp.write_text(lines))

    # -- loops ---------------------------------------------------------------------------------------
    def _loader(self, epoch: int) -> DataLoader:
        self.train_set.epoch = epoch
        batches = GlobalBatches(
            len(self.train_set),
            self.config.batch_size,
            self.device_batch,
            self.rank,
            self.world,
            self.config.seed,
            epoch,
            self.step_in_epoch,
        )
        return DataLoader(
            self.train_set,
            batch_sampler=batches,
            num_workers=resolve_workers(self.config.workers),
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
        )

    def _validate(self) -> dict[str, float]:
        if self.val_set is None:
            return {}
        loader = DataLoader(
            self.val_set,
            batch_size=self.device_batch,
            sampler=ShardSampler(len(self.val_set), self.rank, self.world),
            num_workers=resolve_workers(self.config.workers),
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
        )
        self.model.eval()
        with torch.no_grad(), self._autocast():
            result = self.recipe.validate(self.model, loader, self.device)
        return result

    def _train_epoch(self) -> dict[str, float]:
        from tqdm import tqdm

        self.model.train()
        loader = self._loader(self.epoch)
        accumulate = loader.batch_sampler.accumulate
        totals, logged = self.totals, self.logged
        bar = tqdm(
            loader,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not self.progress or self.rank,
            leave=False,
            dynamic_ncols=True,
        )
        for micro, batch in enumerate(bar):
            batch = Batch(
                batch.images.to(self.device, non_blocking=True),
                batch.labels.to(self.device),
                batch.targets,
                batch.skipped,
            )
            last = (micro + 1) % accumulate == 0
            sync = self.model.no_sync() if self.world > 1 and not last else contextlib.nullcontext()
            with sync:  # DDP: no gradient all-reduce until the last micro-step of a global batch
                with self._autocast():
                    loss = self.recipe.loss(self.model, batch)
                loss, terms = loss if isinstance(loss, tuple) else (loss, {})
                self.scaler.scale(loss / accumulate).backward()
            size = len(batch.images)
            # on the device: a float() here would wait for the step at every micro-batch
            totals += torch.cat(
                [loss.detach().float().reshape(1) * size, totals.new_tensor([size, batch.skipped])]
            )
            for name, value in terms.items():
                logged[name] = logged.get(name, 0) + value.detach().float() * size
            if not last:
                continue
            self._warm_up()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.config.schedule == "onecycle":
                self.scheduler.step()
            self.step_in_epoch += 1
            self.global_step += 1
            if self.global_step % 20 == 1 and not bar.disable:  # reading the loss waits for the device
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if self.config.checkpoint_every and self.global_step % self.config.checkpoint_every == 0:
                self._save()
            if self.config.max_steps is not None and self.global_step >= self.config.max_steps:
                raise _StopTraining
        all_reduce_sum(totals)
        record = {"train_loss": float(totals[0] / totals[1].clamp(min=1)), "skipped": int(totals[2])}
        for name in sorted(logged):
            record[f"train_{name}"] = float(all_reduce_sum(logged[name]) / totals[1].clamp(min=1))
        return record

    def fit(self) -> list[dict]:
        self._build()
        if self.resume:
            self._load()
        elif self.rank == 0:
            self._claim()
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:  # the log as of the checkpoint: an epoch line lost to a kill comes back
                self._write_log()
        try:
            while self.epoch < self.config.epochs:
                start = time.perf_counter()
                if self.step_in_epoch == 0:
                    self._new_epoch()
                record = {"epoch": self.epoch + 1, "lr": self.epoch_lr, **self._train_epoch()}
                record.update(self._validate())
                record["seconds"] = round(time.perf_counter() - start, 2)
                if self.config.schedule == "multistep":
                    self.scheduler.step()
                self.epoch += 1
                self.step_in_epoch = 0
                self.history.append(record)
                self._save()
                if self.rank == 0:
                    self._write_log()
                    self.log(json.dumps(record))
        except _StopTraining:
            pass
        return self.history


class _StopTraining(Exception):
    """Internal: ``max_steps`` reached."""
