"""The shared training loop: recipes, checkpoints, exact resume, accumulation and DDP equivalence."""

import json

import pytest
import torch
import torchvision

import castream
from castream.data import SyntheticShapes, eval_transform, train_transform
from castream.data.synthetic import generate
from castream.train import ClassifierRecipe, TrainConfig, Trainer, train_classifier, train_stream


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("synth") / "s", classes=3, train=48, val=12, size=32, workers=1)
    train = SyntheticShapes(root, "train", transform=train_transform(32, scale=(0.6, 1.0)))
    val = SyntheticShapes(root, "val", transform=eval_transform(32, resize=32))
    return train, val


def small_resnet(classes=3):
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=classes)


def config(**kw):
    base = dict(epochs=2, batch_size=8, lr=0.05, milestones=(1,), gamma=0.5, workers=0, seed=7)
    return TrainConfig(**{**base, **kw})


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_classifier_training_writes_logs_checkpoints_and_weights(shapes, tmp_path):
    train, val = shapes
    model = small_resnet()
    history = train_classifier(model, train, val, tmp_path, config(), progress=False, log=lambda s: None)
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["lr"] == 0.025
    assert all(0 <= h["acc"] <= 1 for h in history)
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == history
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "model.safetensors").is_file()
    reloaded = castream.models.load_weights(small_resnet(), tmp_path / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))


def test_resume_after_interruption_matches_uninterrupted_run(shapes, tmp_path):
    train, _ = shapes
    full = small_resnet()
    Trainer(
        ClassifierRecipe(full), train, None, config(), tmp_path / "full", progress=False, log=lambda s: None
    ).fit()
    interrupted = small_resnet()
    Trainer(
        ClassifierRecipe(interrupted),
        train,
        None,
        config(max_steps=8, checkpoint_every=1),
        tmp_path / "cut",
        progress=False,
        log=lambda s: None,
    ).fit()  # stops mid-epoch 2 (6 steps per epoch)
    resumed = small_resnet()
    history = Trainer(
        ClassifierRecipe(resumed),
        train,
        None,
        config(),
        tmp_path / "cut",
        resume=True,
        progress=False,
        log=lambda s: None,
    ).fit()
    assert [h["epoch"] for h in history] == [1, 2]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    def log(folder):  # every field but the wall-clock time
        lines = (tmp_path / folder / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert log("cut") == log("full") and len(log("full")) == 2


def test_gradient_accumulation_equals_the_full_batch(shapes, tmp_path):
    # the stream recipe has no batch-dependent layer (the backbone is frozen in eval mode), so 4 micro-batches
    # of 2 must give the update of one batch of 8
    train, _ = shapes
    full = castream.attach_stream(small_resnet(), probe_size=32)
    micro = castream.attach_stream(small_resnet(), probe_size=32)
    micro.stream.load_state_dict(full.stream.state_dict())
    for model, device_batch, out in ((full, None, "full"), (micro, 2, "micro")):
        Trainer(
            castream.train.StreamRecipe(model),
            train,
            None,
            config(epochs=1, max_steps=2, device_batch=device_batch),
            tmp_path / out,
            progress=False,
        ).fit()
    for k, v in full.stream.state_dict().items():
        torch.testing.assert_close(micro.stream.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_stream_training_changes_only_the_stream(shapes, tmp_path):
    train, val = shapes
    backbone = small_resnet()
    before = params(backbone)
    model = castream.attach_stream(backbone, probe_size=32)
    stream_before = params(model.stream)
    history = train_stream(model, train, val, tmp_path, config(epochs=1), progress=False, log=lambda s: None)
    assert set(history[0]) >= {"acc_gap", "acc_ca", "train_loss"}
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
    assert any(not torch.equal(v, stream_before[k]) for k, v in model.stream.state_dict().items())
    loaded = castream.load_stream(small_resnet(), tmp_path / "stream.safetensors")
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.stream.state_dict().values(), model.stream.state_dict().values())
    )


def test_resume_errors(shapes, tmp_path):
    train, _ = shapes
    Trainer(
        ClassifierRecipe(small_resnet()),
        train,
        None,
        config(epochs=1, max_steps=1, checkpoint_every=1),
        tmp_path,
        progress=False,
    ).fit()
    with pytest.raises(ValueError, match=r"different config: lr: 0.05 -> 0.1"):
        Trainer(
            ClassifierRecipe(small_resnet()),
            train,
            None,
            config(lr=0.1),
            tmp_path,
            resume=True,
            progress=False,
        ).fit()
    with pytest.raises(ValueError, match="does not match this model"):
        Trainer(
            ClassifierRecipe(small_resnet(5)),
            train,
            None,
            config(epochs=1),
            tmp_path,
            resume=True,
            progress=False,
        ).fit()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(ClassifierRecipe(small_resnet()), train, None, config(), tmp_path / "none", resume=True).fit()


def test_interrupted_checkpoint_write_keeps_the_previous_one(shapes, tmp_path, monkeypatch):
    train, _ = shapes
    trainer = Trainer(
        ClassifierRecipe(small_resnet()),
        train,
        None,
        config(epochs=1, max_steps=1, checkpoint_every=1),
        tmp_path,
        progress=False,
    )
    trainer.fit()
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def failing_save(obj, f, *a, **k):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        trainer._save()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert not list(tmp_path.glob(".checkpoint.pt.*"))


def test_full_disk_inside_torch_save_says_so(tmp_path, monkeypatch):
    """torch.save reports a full disk as '[enforce fail at inline_container.cc:672] . unexpected pos ...'
    (issue 21): the error names the file, the cause and that the previous checkpoint is intact."""
    from castream.utils import atomic_write

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"previous")

    def failing(tmp):
        tmp.write_bytes(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4000")

    with pytest.raises(OSError, match=r"No space left .*checkpoint.pt; the previous checkpoint.pt is intact"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"previous" and not list(tmp_path.glob(".checkpoint.pt.*"))
    with pytest.raises(RuntimeError, match="another failure"):  # other errors pass through unchanged
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("another failure")))


def test_warm_up_is_linear_per_step_then_the_schedule(shapes, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    train, _ = shapes  # 48 images, batch 8: 6 steps per epoch
    seen = []
    handle = register_optimizer_step_pre_hook(lambda opt, a, k: seen.append(opt.param_groups[0]["lr"]))
    try:
        cfg = config(epochs=3, warmup_epochs=1, milestones=(2,))
        Trainer(ClassifierRecipe(small_resnet()), train, None, cfg, tmp_path, progress=False).fit()
    finally:
        handle.remove()
    expected = [0.05 * k / 6 for k in range(6)] + [0.05] * 6 + [0.025] * 6
    assert seen == pytest.approx(expected)
    with pytest.raises(ValueError, match="every milestone after it"):
        config(warmup_epochs=1, milestones=(1,))
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        config(warmup_epochs=-1)


def test_config_validation():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="not a multiple"):
        Trainer(
            ClassifierRecipe(small_resnet()),
            list(range(100)),
            None,
            TrainConfig(batch_size=10, device_batch=3),
            "unused",
        )


def _ddp_worker(rank, world, init, root, out, queue):
    import os

    import torch.distributed as dist

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    train = SyntheticShapes(root, "train", transform=train_transform(32, scale=(0.6, 1.0)))
    model = castream.attach_stream(small_resnet(), probe_size=32)
    Trainer(
        castream.train.StreamRecipe(model), train, None, config(epochs=1, max_steps=1), out, progress=False
    ).fit()
    if rank == 0:  # numpy arrays travel by value: a tensor's shared-memory handle dies with this process
        queue.put({k: v.detach().cpu().numpy().copy() for k, v in model.stream.state_dict().items()})
    dist.destroy_process_group()


def test_two_process_ddp_step_equals_single_process(shapes, tmp_path):
    import torch.multiprocessing as mp

    train, _ = shapes
    root = train.samples[0].path.parents[2]
    single = castream.attach_stream(small_resnet(), probe_size=32)
    Trainer(
        castream.train.StreamRecipe(single),
        train,
        None,
        config(epochs=1, max_steps=1),
        tmp_path / "one",
        progress=False,
    ).fit()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [
        ctx.Process(target=_ddp_worker, args=(r, 2, init, root, tmp_path / "ddp", queue)) for r in range(2)
    ]
    for p in procs:
        p.start()
    distributed = queue.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
    for k, v in single.stream.state_dict().items():
        torch.testing.assert_close(torch.from_numpy(distributed[k]), v, rtol=1e-5, atol=1e-6)


def test_workers_auto_and_bad_values():
    import os

    from castream.train.loop import resolve_workers

    assert resolve_workers("auto") == min(8, os.cpu_count() or 1)
    assert TrainConfig().workers == "auto" and resolve_workers(0) == 0
    for bad in (-1, "four", 1.5, True):
        with pytest.raises(ValueError, match="workers must be"):
            TrainConfig(workers=bad)


def test_training_loads_no_annotations(tmp_path, monkeypatch):
    """The classifier recipe reads no boxes or masks, so its loader gets the dataset's view without them
    (the caller's dataset is not modified)."""
    root = generate(tmp_path / "s", classes=3, train=8, val=0, size=32, workers=1)
    train = SyntheticShapes(root, "train", transform=train_transform(32))
    seen = []
    original = ClassifierRecipe.loss

    def loss(self, model, batch):
        seen.extend(batch.targets)
        return original(self, model, batch)

    monkeypatch.setattr(ClassifierRecipe, "loss", loss)
    model = torchvision.models.resnet18(num_classes=3)
    train_classifier(
        model, train, None, tmp_path / "run", TrainConfig(epochs=1, batch_size=4, workers=0), progress=False
    )
    assert seen and all(t == {} for t in seen) and train.annotations


# --- files castream did not write, finished runs, the log after a kill (issue 21, items 5, 6, 14) ----


def test_training_refuses_user_files_and_a_finished_run_without_resume(shapes, tmp_path):
    train, _ = shapes
    quiet = {"progress": False, "log": lambda s: None}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"my weights")
    with pytest.raises(FileExistsError, match=r"not a castream training run \(model\.safetensors\)"):
        train_classifier(small_resnet(), train, None, mine, config(epochs=1), **quiet)
    assert (mine / "model.safetensors").read_bytes() == b"my weights"

    run = tmp_path / "run"
    train_classifier(small_resnet(), train, None, run, config(epochs=1), **quiet)
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(FileExistsError, match="pass --resume"):
        train_classifier(small_resnet(), train, None, run, config(epochs=1), **quiet)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    history = train_classifier(small_resnet(), train, None, run, config(epochs=2), resume=True, **quiet)
    assert [json.loads(x)["epoch"] for x in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert len(history) == 2


def test_a_kill_between_checkpoint_and_log_line_is_repaired_by_resume(shapes, tmp_path, monkeypatch):
    """The epoch's log line is written after its checkpoint; a kill in between loses the line, and the
    resumed run restores it from the checkpoint's history (instead of going on without it)."""
    train, _ = shapes
    quiet = {"progress": False, "log": lambda s: None}
    original = Trainer._write_log

    def killed(self):
        if len(self.history) == 1:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(Trainer, "_write_log", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(ClassifierRecipe(small_resnet()), train, None, config(epochs=1), tmp_path, **quiet).fit()
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "log.jsonl").exists()
    monkeypatch.setattr(Trainer, "_write_log", original)
    history = Trainer(
        ClassifierRecipe(small_resnet()), train, None, config(epochs=2), tmp_path, resume=True, **quiet
    ).fit()
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == history and [r["epoch"] for r in lines] == [1, 2]


def test_the_stream_recipe_defaults_are_the_thesis():
    """PROTOCOL.md, thesis §3.4: SGD, momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 every 30
    epochs, 90 epochs, global batch 256, no warm-up or label smoothing."""
    config = TrainConfig()
    assert (config.optimizer, config.momentum, config.weight_decay, config.lr) == ("sgd", 0.9, 1e-4, 0.1)
    assert (config.schedule, config.milestones, config.gamma) == ("multistep", (30, 60), 0.1)
    assert (config.epochs, config.batch_size, config.warmup_epochs) == (90, 256, 0)
    assert config.label_smoothing == 0


def test_a_stream_is_tied_to_the_backbone_weights_it_was_trained_on(shapes, tmp_path):
    """Issue 32 item 5: resuming on, or loading onto, other weights of the same architecture was silent."""
    from castream.utils import state_digest

    train, val = shapes
    model = castream.attach_stream(small_resnet(), probe_size=32)
    options = dict(progress=False, log=lambda s: None)
    train_stream(
        model, train, val, tmp_path / "a", config(epochs=1, max_steps=1, checkpoint_every=1), **options
    )
    torch.manual_seed(1)
    other = torchvision.models.resnet18(num_classes=3)
    assert state_digest(other) != state_digest(small_resnet()) == state_digest(small_resnet())
    with pytest.raises(ValueError, match=r"trained on backbone weights [0-9a-f]{12}, but this backbone's"):
        train_stream(
            castream.attach_stream(other, probe_size=32),
            train,
            val,
            tmp_path / "a",
            config(epochs=1),
            resume=True,
            **options,
        )
    train_stream(
        castream.attach_stream(small_resnet(), probe_size=32),
        train,
        val,
        tmp_path / "a",
        config(epochs=1),
        resume=True,
        **options,
    )  # its own backbone resumes and finishes
    path = tmp_path / "a" / "stream.safetensors"
    castream.load_stream(small_resnet(), path)
    with pytest.raises(
        ValueError, match="other weights of the architecture, or the same ones in another dtype"
    ):
        castream.load_stream(other, path)
    with pytest.raises(ValueError, match=r"\(bfloat16\)"):
        castream.load_stream(small_resnet().to(torch.bfloat16), path)


def test_extending_a_onecycle_run_is_refused_with_the_reason(shapes, tmp_path):
    """Issue 32 item 12: torch's "Tried to step 41 times" once surfaced from the scheduler."""
    train, _ = shapes
    options = dict(progress=False, log=lambda s: None)
    train_classifier(small_resnet(), train, None, tmp_path, config(epochs=1, schedule="onecycle"), **options)
    with pytest.raises(ValueError, match="onecycle schedule is laid out over the run's total steps"):
        train_classifier(
            small_resnet(),
            train,
            None,
            tmp_path,
            config(epochs=2, schedule="onecycle"),
            resume=True,
            **options,
        )
