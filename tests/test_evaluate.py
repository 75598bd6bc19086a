"""The evaluation runner, its reports, the CLI end to end, explain and the benchmark entry points."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import castream
from castream.cli import main
from castream.data import SyntheticShapes, eval_transform, train_transform
from castream.data.synthetic import generate
from castream.evaluate import EvalConfig, Runner
from castream.models import save_weights
from castream.train import TrainConfig, train_stream


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny synthetic set, a classifier and a trained stream (random classifier: speed over accuracy)."""
    tmp = tmp_path_factory.mktemp("eval")
    root = generate(tmp / "synth", classes=3, train=16, val=12, size=32, workers=1)
    torch.manual_seed(0)
    classifier = torchvision.models.resnet18(num_classes=3)
    save_weights(classifier, tmp / "model.safetensors")
    model = castream.attach_stream(classifier, probe_size=32)
    train = SyntheticShapes(root, "train", transform=train_transform(32, scale=(0.6, 1.0)))
    val = SyntheticShapes(root, "val", transform=eval_transform(32, resize=32))
    train_stream(
        model, train, val, tmp / "stream", TrainConfig(epochs=1, batch_size=8, workers=0), progress=False
    )
    return {
        "root": root,
        "checkpoint": tmp / "model.safetensors",
        "stream": tmp / "stream" / "stream.safetensors",
    }


def config(artifacts, out, **kw):
    base = dict(
        model="resnet18",
        data=f"synthetic:{artifacts['root']}",
        checkpoint=str(artifacts["checkpoint"]),
        stream=str(artifacts["stream"]),
        methods=("gradcam", "scorecam"),
        images=9,
        batch_size=3,
        size=32,
        resize=32,
        out=str(out),
    )
    return EvalConfig(**{**base, **kw})


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_end_to_end(artifacts, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--model",
            "resnet18",
            "--data",
            f"synthetic:{artifacts['root']}",
            "--checkpoint",
            str(artifacts["checkpoint"]),
            "--stream",
            str(artifacts["stream"]),
            "--methods",
            "gradcam",
            "gradcam++",
            "scorecam",
            "opticam",
            "--metrics",
            "recognition",
            "insertion",
            "deletion",
            "localization",
            "aopc",
            "max-sensitivity",
            "adcc",
            "--images",
            "6",
            "--batch-size",
            "3",
            "--size",
            "32",
            "--resize",
            "32",
            "--option",
            "opticam.max_iter=3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    for name in ("results.json", "results.csv", "results.md", "saliency_grid.png", "curves.png", "ad_ag.png"):
        assert (out / name).is_file(), name
    rows = read_csv(out / "results.csv")
    assert [(r["pooling"], r["method"]) for r in rows] == [
        (p, m) for p in ("gap", "ca") for m in ("gradcam", "gradcam++", "scorecam", "opticam")
    ]
    expected = {
        "ad",
        "ag",
        "ai",
        "insertion",
        "deletion",
        "om",
        "le",
        "f1",
        "boxacc",
        "sp",
        "ep",
        "sm",
        "aopc",
        "max_sensitivity",
        "adcc",
        "coherency",
        "complexity",
        "accuracy",
        "parameters",
        "gflops",
    }
    assert expected <= set(rows[0]) and {"ad_low", "ad_high", "boxacc_low"} <= set(rows[0])
    for row in rows:
        for key, value in row.items():
            if key not in ("model", "pooling", "method", "protocol"):
                assert not math.isnan(float(value)), (key, row)
        assert row["images"] == "6" and row["protocol"] == "thesis"
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["name"] == "thesis" and results["versions"]["castream"] == castream.__version__
    params = {m["pooling"]: m["parameters"] for m in results["models"]}
    assert (
        params["ca"] > params["gap"] == castream.count_parameters(torchvision.models.resnet18(num_classes=3))
    )
    markdown = (out / "results.md").read_text()
    assert "| NETWORK | ATTRIBUTION | POOLING | AD↓ | AG↑ | AI↑ | I↑ | D↓ |" in markdown
    assert "OM↓" in markdown and "GFLOPS" in markdown and "protocol `thesis`" in markdown


def test_resume_after_kill_gives_the_same_csv(artifacts, tmp_path, monkeypatch):
    Runner(config(artifacts, tmp_path / "full"), progress=False).run()
    calls = {"n": 0}
    original = Runner._append

    def dying_append(self, cell, record):
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed midway: the fifth batch record is never written
        calls["n"] += 1
        original(self, cell, record)

    monkeypatch.setattr(Runner, "_append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        Runner(config(artifacts, tmp_path / "cut"), progress=False).run()
    monkeypatch.setattr(Runner, "_append", original)
    assert not (tmp_path / "cut" / "results.csv").exists()
    Runner(config(artifacts, tmp_path / "cut"), progress=False).run()
    assert read_csv(tmp_path / "cut" / "results.csv") == read_csv(tmp_path / "full" / "results.csv")
    with pytest.raises(ValueError, match="another evaluation"):
        Runner(config(artifacts, tmp_path / "cut", images=8), progress=False).run()


def _eval_worker(rank, world, init, cfg, queue):
    import os

    import torch.distributed as dist

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    Runner(cfg, progress=False).run()
    dist.barrier()
    queue.put(rank)
    dist.destroy_process_group()


def test_two_process_evaluation_equals_single_process(artifacts, tmp_path):
    import torch.multiprocessing as mp

    Runner(config(artifacts, tmp_path / "single"), progress=False).run()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    cfg = config(artifacts, tmp_path / "ddp")
    procs = [ctx.Process(target=_eval_worker, args=(r, 2, init, cfg, queue)) for r in range(2)]
    for p in procs:
        p.start()
    assert sorted(queue.get(timeout=300) for _ in procs) == [0, 1]
    for p in procs:
        p.join(timeout=60)
    assert len(list((tmp_path / "ddp" / "shards").glob("resnet18-gap-gradcam.rank*.jsonl"))) == 2
    assert read_csv(tmp_path / "ddp" / "results.csv") == read_csv(tmp_path / "single" / "results.csv")


def test_explain_writes_overlay_and_map(tmp_path, capsys):
    for i in range(2):
        Image.fromarray((np.random.rand(50, 40, 3) * 255).astype(np.uint8)).save(tmp_path / f"img{i}.png")
    code = main(
        [
            "explain",
            str(tmp_path / "img0.png"),
            str(tmp_path / "img1.png"),
            "--model",
            "resnet18",
            "--num-classes",
            "7",
            "--method",
            "gradcam++",
            "--size",
            "64",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].count(",") == 4  # the top-5 classes
    saved = np.load(tmp_path / "out" / "img0_gradcampp.npy")
    assert saved.shape == (64, 64) and saved.dtype == np.float32 and saved.min() >= 0 and saved.max() <= 1
    assert (tmp_path / "out" / "img1_gradcampp.png").is_file()


def test_evaluation_config_errors(artifacts, tmp_path):
    with pytest.raises(ValueError, match="needs a trained stream"):
        EvalConfig(model="resnet18", data="synthetic:x", out=str(tmp_path), poolings=("ca",))
    with pytest.raises(ValueError, match="unknown metric"):
        EvalConfig(
            model="resnet18", data="synthetic:x", out=str(tmp_path), poolings=("gap",), metrics=("speed",)
        )
    with pytest.raises(ValueError, match="unknown saliency method"):
        EvalConfig(model="resnet18", data="synthetic:x", out=str(tmp_path), poolings=("gap",), methods=("x",))


@pytest.mark.parametrize(
    "name,args",
    [
        (
            "saliency",
            [
                "--models",
                "resnet18",
                "--size",
                "32",
                "--batch",
                "2",
                "--methods",
                "gradcam",
                "scorecam",
                "opticam",
                "--opticam-iterations",
                "2",
                "--score-batch",
                "128",
                "--repeats",
                "1",
            ],
        ),
        ("causal", ["--model", "resnet18", "--size", "32", "--images", "1", "--batch-sizes", "64"]),
        (
            "train",
            [
                "--model",
                "resnet18",
                "--size",
                "32",
                "--batch",
                "4",
                "--synthetic-images",
                "8",
                "--synthetic-size",
                "32",
                "--repeats",
                "1",
            ],
        ),
        (
            "gradreg",
            ["--model", "cifar_resnet18", "--size", "32", "--batch", "4", "--classes", "5", "--repeats", "1"],
        ),
    ],
)
def test_benchmarks_run_and_print_json(name, args, capsys):
    from importlib import import_module

    import_module(f"castream.bench.{name}").main(args)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records and all(r.get("ratio", 1) > 0 for r in records)


def test_compare_models_side_by_side(artifacts, tmp_path):
    cfg = config(
        artifacts, tmp_path, methods=("gradcam",), images=6, compare={"same": str(artifacts["checkpoint"])}
    )
    Runner(cfg, progress=False).run()
    rows = {(r["model"], r["pooling"]): r for r in read_csv(tmp_path / "results.csv")}
    assert set(rows) == {("resnet18", "gap"), ("resnet18", "ca"), ("same", "gap")}  # no stream for "same"
    main_gap, same = rows[("resnet18", "gap")], rows[("same", "gap")]
    assert {k: v for k, v in main_gap.items() if k != "model"} == {
        k: v for k, v in same.items() if k != "model"
    }
    assert "| same |" in (tmp_path / "results.md").read_text()
