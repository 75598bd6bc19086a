"""The evaluation runner, its reports, the CLI end to end, explain and the benchmark entry points."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import castream
from castream.cli import main
from castream.data import SyntheticShapes, eval_transform, train_transform
from castream.data.synthetic import generate
from castream.evaluate import EvalConfig, Runner
from castream.models import build_model, save_weights
from castream.train import TrainConfig, train_stream


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny synthetic set, a classifier and a trained stream (random classifier: speed over accuracy)."""
    tmp = tmp_path_factory.mktemp("eval")
    root = generate(tmp / "synth", classes=3, train=16, val=12, size=32, workers=1)
    torch.manual_seed(0)
    classifier = build_model("resnet10_os16", num_classes=3)
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
        model="resnet10_os16",
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
            "resnet10_os16",
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
        (p, m)
        for p in ("gap", "ca")
        for m in ("gradcam", "gradcam++", "scorecam", "opticam", "fakecam", "random")
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
    for row in rows:  # SA-CAM's overall AUC is insertion - deletion, per image, so also on average
        assert float(row["overall"]) == pytest.approx(
            float(row["insertion"]) - float(row["deletion"]), abs=1e-4
        )
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["name"] == "thesis" and results["versions"]["castream"] == castream.__version__
    params = {m["pooling"]: m["parameters"] for m in results["models"]}
    assert (
        params["ca"] > params["gap"] == castream.count_parameters(build_model("resnet10_os16", num_classes=3))
    )
    markdown = (out / "results.md").read_text()
    assert "| NETWORK | ATTRIBUTION | POOLING | N | AD↓ | AG↑ | AI↑ | I↑ | D↓ | I−D↑ |" in markdown
    assert "OM↓" in markdown and "GFLOPS" in markdown and "protocol `thesis`" in markdown


def test_resume_after_kill_gives_the_same_csv(artifacts, tmp_path, monkeypatch):
    Runner(config(artifacts, tmp_path / "full"), progress=False).run()
    from castream.evaluate.store import Store

    calls = {"n": 0}
    original = Store.append

    def dying_append(self, cell, record, arrays=None):
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed midway: the fifth batch record is never written
        calls["n"] += 1
        original(self, cell, record, arrays)

    monkeypatch.setattr(Store, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        Runner(config(artifacts, tmp_path / "cut"), progress=False).run()
    monkeypatch.setattr(Store, "append", original)
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

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: CPU convolutions round differently with other thread counts
    try:
        Runner(config(artifacts, tmp_path / "single"), progress=False).run()
    finally:
        torch.set_num_threads(threads)
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
    assert len(list((tmp_path / "ddp" / "shards").glob("resnet10_os16-gap-gradcam.rank*.jsonl"))) == 2
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
    log, *printed = capsys.readouterr().out.splitlines()
    assert log.startswith("input statistics mean (0.485, 0.456, 0.406)") and "the default (ImageNet)" in log
    assert len(printed) == 2 and printed[0].count(",") == 4  # the top-5 classes
    saved = np.load(tmp_path / "out" / "img0_gradcampp.npy")
    assert saved.shape == (64, 64) and saved.dtype == np.float32 and saved.min() >= 0 and saved.max() <= 1
    assert (tmp_path / "out" / "img1_gradcampp.png").is_file()
    fast = tmp_path / "fast"
    args = [str(tmp_path / "img0.png"), "--model", "resnet18", "--num-classes", "7", "--size", "64"]
    assert (
        main(["explain", *args, "--out", str(fast), "--device", "cpu", "--amp", "bf16", "--channels-last"])
        == 0
    )
    assert np.load(fast / "img0_gradcam.npy").shape == (64, 64)


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
                "64",
                "--batch",
                "2",
                "--methods",
                "gradcam",
                "scorecam",
                "opticam",
                "extremalperturbation",
                "--opticam-iterations",
                "2",
                "--ep-iterations",
                "2",
                "--vit-models",
                "vit_b_16",
                "--vit-methods",
                "transformerattribution",
                "--score-batch",
                "128",
                "--repeats",
                "1",
            ],
        ),
        ("causal", ["--model", "resnet18", "--size", "32", "--images", "1", "--batch-sizes", "64"]),
        (
            "peers",
            [
                "--model",
                "resnet18",
                "--size",
                "64",
                "--batch",
                "1",
                "--repeats",
                "1",
                "--only",
                "gradcam",
                "road morf",
            ],
        ),
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
        (
            "evaluate",
            ["--model", "resnet18", "--size", "64", "--images", "4", "--batch", "2", "--repeats", "1"],
        ),
        ("precision", ["--images", "4", "--map-images", "2", "--methods", "gradcam"]),
        ("plan", ["--images", "5000", "--sample", "50"]),
        ("claims", ["--claims", "40", "--resamples", "100", "--metrics", "2"]),
        (
            "causal",
            [
                "--model",
                "resnet18",
                "--size",
                "32",
                "--images",
                "1",
                "--batch-sizes",
                "64",
                "--amp",
                "bf16",
                "--channels-last",
            ],
        ),
    ],
)
def test_benchmarks_run_and_print_json(name, args, capsys):
    from importlib import import_module

    import_module(f"castream.bench.{name}").main(args)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records and all(r.get("ratio", 1) > 0 for r in records)


def test_peer_benchmark_rows_agree_and_time_both_sides(capsys):
    """``castream bench peers`` on a few rows: castream and the peer give the same maps or scores (the
    Quantus rows: the runner's group and Quantus called directly), and both sides are timed."""
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("quantus")
    from castream.bench import peers

    rows = ["gradcam", "road morf", "quantus:Sparseness", "quantus:FaithfulnessCorrelation"]
    peers.main(["--model", "resnet18", "--size", "64", "--batch", "2", "--repeats", "1", "--only", *rows])
    records = {r["row"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(records) == set(rows)
    for record in records.values():
        assert record["max_abs_difference"] < 1e-5 and record["castream_s"] > 0 and record["peer_s"] > 0


def test_compare_models_side_by_side(artifacts, tmp_path):
    cfg = config(
        artifacts, tmp_path, methods=("gradcam",), images=6, compare={"same": str(artifacts["checkpoint"])}
    )
    Runner(cfg, progress=False).run()
    rows = {(r["model"], r["pooling"]): r for r in read_csv(tmp_path / "results.csv")}
    assert set(rows) == {
        ("resnet10_os16", "gap"),
        ("resnet10_os16", "ca"),
        ("same", "gap"),
    }  # no stream for "same"
    main_gap, same = rows[("resnet10_os16", "gap")], rows[("same", "gap")]
    assert {k: v for k, v in main_gap.items() if k != "model"} == {
        k: v for k, v in same.items() if k != "model"
    }
    assert "| same |" in (tmp_path / "results.md").read_text()


def test_method_images_baselines_discrimination_and_paired_comparisons(artifacts, tmp_path):
    cfg = config(
        artifacts,
        tmp_path,
        methods=("gradcam", "scorecam"),
        images=9,
        method_images={"scorecam": 3},
        metrics=("recognition", "localization", "discrimination"),
        method_options={"random": {"grid": 2}},
    )
    assert cfg.methods == ("gradcam", "scorecam", "fakecam", "random")
    results = Runner(cfg, progress=False).run()
    images = {(c["pooling"], c["method"]): c["images"] for c in results["cells"]}
    assert images[("gap", "scorecam")] == images[("ca", "scorecam")] == 3 and images[("ca", "random")] == 9
    cell = next(c for c in results["cells"] if c["method"] == "gradcam")
    assert {"discrimination", "energy_target", "sp_target", "sp"} <= set(cell["metrics"])
    # the comparison is the claims' paired test of the per-image rows of the two cells, and their rule:
    # 9 images are too few to call anything significant
    from castream.evaluate.results import read_shards

    gap, _ = read_shards(tmp_path, "resnet10_os16-gap-gradcam")
    ca, _ = read_shards(tmp_path, "resnet10_os16-ca-gradcam")
    common = sorted(gap)
    expected = castream.metrics.paired_test(
        torch.tensor([gap[i]["ad"] for i in common]), torch.tensor([ca[i]["ad"] for i in common]), seed=0
    )
    entry = next(e for e in results["comparisons"] if e["method"] == "gradcam")
    assert entry["images"] == 9 and entry["metrics"]["ad"] == {**expected, "significant": False}
    markdown = (tmp_path / "results.md").read_text()
    assert "| NETWORK | ATTRIBUTION | POOLING | N | AD↓ | AG↑ | AI↑ |" in markdown
    assert "CA vs GAP:" in markdown and "with 2 × 2 feature maps" in markdown
    # the run attaches the claims whose metrics it evaluated (CA vs GAP needs insertion and deletion too),
    # with the same per-image differences; 9 images are too few for a verdict
    claimed = results["claims"]
    assert {c["id"] for c in claimed} == {"ca-stream/accuracy", "fake-cam/gradcam"}
    fake, _ = read_shards(tmp_path, "resnet10_os16-gap-fakecam")
    entry = next(c for c in claimed if c["comparison"] == "fakecam GAP − gradcam GAP")
    ad = castream.metrics.paired_bootstrap(
        torch.tensor([gap[i]["ad"] for i in common]), torch.tensor([fake[i]["ad"] for i in common]), seed=0
    )
    assert entry["metrics"]["ad"]["mean"] == ad["mean"] and entry["metrics"]["ad"]["expected"] == -1
    assert entry["verdict"] == "inconclusive" and entry["images_to_decide"] == 30  # claims.MIN_IMAGES
    assert "## Claims of the papers, checked" in markdown


def test_box_study_and_metric_options_in_the_runner(artifacts, tmp_path):
    cfg = config(
        artifacts,
        tmp_path,
        methods=("gradcam",),
        images=6,
        metrics=("recognition", "box-study", "aopc"),
        metric_options={"aopc": {"convention": "quantus", "patch_size": 8, "regions": 4}},
    )
    results = Runner(cfg, progress=False).run()
    cell = next(c for c in results["cells"] if c["method"] == "gradcam" and c["pooling"] == "gap")
    assert {"ad_box", "ag_complement", "ai_inside", "ad_outside", "aopc"} <= set(cell["metrics"])
    fake = next(c for c in results["cells"] if c["method"] == "fakecam" and c["pooling"] == "gap")
    # Fake-CAM is all ones but a pixel: B ∩ S is (almost) the box itself, as in thesis Table 2.5
    assert abs(fake["metrics"]["ad_inside"]["mean"] - fake["metrics"]["ad_box"]["mean"]) < 0.02
    markdown = (tmp_path / "results.md").read_text()
    assert "## Bounding-box study" in markdown and "AD B∩S↓" in markdown
    assert "Metric options (non-default): aopc: convention=quantus, patch_size=8, regions=4." in markdown
    with pytest.raises(ValueError, match="aopc has no option 'seed'"):
        config(artifacts, tmp_path, metrics=("aopc",), metric_options={"aopc": {"seed": 3}})
    with pytest.raises(ValueError, match="not among the metrics"):
        config(artifacts, tmp_path, metric_options={"aopc": {"regions": 3}})
    with pytest.raises(ValueError, match="takes no options"):
        config(artifacts, tmp_path, metrics=("box-study",), metric_options={"box-study": {"x": 1}})
    with pytest.raises(ValueError, match=r"localization has no option 'x'; it takes \['probability'\]"):
        config(artifacts, tmp_path, metric_options={"localization": {"x": 1}})
    config(artifacts, tmp_path, metric_options={"localization": {"probability": "clean"}})  # SM's option


def test_adversarial_verification_in_the_runner(artifacts, tmp_path):
    from castream.evaluate.results import read_shards

    cfg = config(
        artifacts,
        tmp_path,
        methods=("gradcam",),
        images=6,
        metrics=("adversarial",),
        metric_options={"adversarial": {"cases": 2}},
    )
    runner = Runner(cfg, progress=False)
    results = runner.run()
    labels = {i: runner.dataset.samples[i].label for i in runner.indices}
    for i in runner.indices:
        hosts = runner.adversarial_hosts(i, labels[i], 2)
        assert len(set(hosts)) == 2 and i not in hosts and all(labels[h] != labels[i] for h in hosts)
        assert hosts == runner.adversarial_hosts(i, labels[i], 2)  # fixed per image, not per batch
    # Fake-CAM's key area is the whole image but its top-left pixel: check each image by hand
    model = runner.models["resnet10_os16"]
    rows, _ = read_shards(tmp_path, "resnet10_os16-gap-fakecam")
    for i in runner.indices:
        image = runner.dataset[i][0]
        hosts = [runner.dataset[h][0] for h in runner.adversarial_hosts(i, labels[i], 2)]
        composites = image.expand(2, -1, -1, -1).clone()
        composites[:, :, 0, 0] = torch.stack(hosts)[:, :, 0, 0]
        with torch.no_grad():
            per_host = (model(composites, pooling="gap").argmax(1) == labels[i]).float()
        hits = per_host.mean().item()
        assert rows[i]["adversarial"] == pytest.approx(hits)
        # each host's result is kept (SA-CAM Tables 4-5 report one row per case)
        assert [rows[i]["adversarial_case1"], rows[i]["adversarial_case2"]] == per_host.tolist()
        assert rows[i]["key_area"] == pytest.approx(1 - 1 / 32**2)
    cell = next(c for c in results["cells"] if c["method"] == "gradcam" and c["pooling"] == "gap")
    assert {"adversarial", "fading", "key_area"} <= set(cell["metrics"])
    adv = [rows[i]["fading"] for i in sorted(rows)]
    fake = next(c for c in results["cells"] if c["method"] == "fakecam" and c["pooling"] == "gap")
    assert fake["metrics"]["fading"]["mean"] == pytest.approx(castream.metrics.fading_rate(torch.tensor(adv)))
    case = [[rows[i]["adversarial_case2"], rows[i]["fading"][1]] for i in sorted(rows)]
    assert fake["metrics"]["adversarial_case2"]["mean"] == pytest.approx(sum(r[0] for r in case) / len(case))
    assert fake["metrics"]["fading_case2"]["mean"] == pytest.approx(
        castream.metrics.fading_rate(torch.tensor(case)), nan_ok=True
    )
    markdown = (tmp_path / "results.md").read_text()
    assert "## Adversarial verification" in markdown and "Fading↓" in markdown and "Key area |" in markdown
    assert "| Acc_adv↑ | Acc_adv case 1↑ | Acc_adv case 2↑ | Fading↓ | Fading case 1↓" in markdown
    with pytest.raises(ValueError, match=r"adversarial\.cases must be an integer >= 1"):
        config(artifacts, tmp_path, metrics=("adversarial",), metric_options={"adversarial": {"cases": 0}})
    with pytest.raises(
        ValueError, match=r"adversarial has no option 'seed'; it takes \['threshold', 'placement', 'cases'\]"
    ):
        config(artifacts, tmp_path, metrics=("adversarial",), metric_options={"adversarial": {"seed": 1}})


def test_captum_attribution_in_the_runner(artifacts, tmp_path):
    pytest.importorskip("captum")
    name = "captum:IntegratedGradients"
    cfg = config(
        artifacts,
        tmp_path,
        methods=(name,),
        images=3,
        metrics=("recognition",),
        baselines=(),
        method_options={name: {"n_steps": 4, "internal_batch_size": 12}},
    )
    results = Runner(cfg, progress=False).run()
    assert {(c["pooling"], c["method"]) for c in results["cells"]} == {("gap", name), ("ca", name)}
    assert all(c["metrics"]["ad"]["n"] == 3 for c in results["cells"])


def test_localization_scores_the_target_class_boxes_only(artifacts):
    from castream.data import class_boxes

    target = {
        "boxes": torch.tensor([[0.0, 0, 4, 4], [5.0, 5, 9, 9], [1.0, 1, 2, 2]]),
        "box_labels": torch.tensor([2, 0, 2]),
    }
    assert class_boxes(target, 2).tolist() == [[0, 0, 4, 4], [1, 1, 2, 2]]
    assert class_boxes(target, 1).shape == (0, 4)
    assert class_boxes({"boxes": target["boxes"]}, 1).shape == (3, 4)  # single-class annotation


@pytest.mark.parametrize(
    "field,value,error",
    [
        ("images", -3, "images must be an integer >= 1, got"),
        ("images", 0, "images must be an integer >= 1, got"),
        ("batch_size", 0, "batch_size must be an integer >= 1, got"),
        ("metric_batch", 0, "metric_batch must be an integer >= 1, got"),
        ("method_images", {"scorecam": 0}, r"method_images\['scorecam'\] must be an integer >= 1, got"),
        ("method_images", {"opticam": 2}, "not among the methods"),
        ("baselines", ("zeros",), "unknown baseline"),
    ],
)
def test_evaluation_counts_are_validated(tmp_path, field, value, error):
    with pytest.raises(ValueError, match=error):
        EvalConfig(
            model="resnet10_os16",
            data="synthetic:x",
            out=str(tmp_path),
            poolings=("gap",),
            methods=("scorecam",),
            **{field: value},
        )


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--compare", "justapath"], "--compare takes LABEL=PATH, got 'justapath'"),
        (["--compare", "a=x", "--compare", "a=y"], "--compare names 'a' twice"),
        (["--method-images", "scorecam=many"], "--method-images takes METHOD=N with an integer N"),
    ],
)
def test_evaluate_cli_rejects_malformed_pairs(tmp_path, capsys, args, fragment):
    code = main(
        ["evaluate", "--model", "resnet10_os16", "--data", "synthetic:x", "--out", str(tmp_path), *args]
    )
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_torn_shard_line_is_recovered_not_lost(artifacts, tmp_path):
    cfg = config(artifacts, tmp_path / "full", methods=("gradcam",), baselines=(), metrics=("recognition",))
    Runner(cfg, progress=False).run()
    cut = config(artifacts, tmp_path / "cut", methods=("gradcam",), baselines=(), metrics=("recognition",))
    Runner(cut, progress=False).run()
    shard = tmp_path / "cut" / "shards" / "resnet10_os16-gap-gradcam.rank0.jsonl"
    lines = shard.read_bytes().split(b"\n")
    assert len(lines) == 4 and lines[-1] == b""  # 3 batches of 3 images
    shard.write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][:25])  # killed while writing batch 3
    (tmp_path / "cut" / "results.csv").unlink()
    Runner(cut, progress=False).run()
    assert read_csv(tmp_path / "cut" / "results.csv") == read_csv(tmp_path / "full" / "results.csv")
    assert [r["images"] for r in read_csv(tmp_path / "cut" / "results.csv")] == ["9"] * 2
    shard.write_bytes(b'{"images": 3}\n' + shard.read_bytes())  # valid JSON of the wrong form
    with pytest.raises(ValueError, match=r"jsonl:1: a shard line must be"):
        Runner(cut, progress=False).run()


def test_unreadable_evaluation_image_is_skipped_and_listed(artifacts, tmp_path):
    import shutil

    root = tmp_path / "synth"
    shutil.copytree(artifacts["root"], root)
    document = json.loads((root / "annotations.json").read_text())
    broken = root / document["splits"]["val"][4]["file"]
    broken.write_bytes(b"not a png")
    cfg = config(artifacts, tmp_path / "out", data=f"synthetic:{root}", methods=("gradcam",), baselines=())
    with pytest.warns(UserWarning):
        results = Runner(cfg, progress=False).run()
    assert [c["images"] for c in results["cells"]] == [8, 8]
    assert [s["index"] for s in results["skipped"]] == [4] and broken.name in results["skipped"][0]["reason"]
    assert "**Skipped:** 1 unreadable image" in (tmp_path / "out" / "results.md").read_text()


def _voc_folder(tmp_path, scenes: dict):
    """A Pascal VOC 2012 layout with one random 64 x 64 JPEG per scene (name -> [(class, box)]), its val
    split, and a random 20-class resnet10_os16 at ``tmp_path / "voc.safetensors"``."""
    from PIL import Image

    from test_data import voc_xml

    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for name, objects in scenes.items():
        pixels = (torch.rand(64, 64, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg")
        voc_xml(root / "Annotations" / f"{name}.xml", objects, w=64, h=64)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(scenes) + "\n")
    torch.manual_seed(0)
    save_weights(build_model("resnet10_os16", num_classes=20), tmp_path / "voc.safetensors")
    return root


def test_voc_every_positive_class_with_sigmoid_probabilities(tmp_path):

    from castream.evaluate.results import read_shards

    root = _voc_folder(
        tmp_path,
        {
            "2008_000001": [("dog", (1, 1, 30, 40)), ("person", (30, 10, 60, 60))],
            "2008_000002": [("cat", (5, 5, 50, 50))],
            "2008_000003": [("person", (0, 0, 64, 64)), ("cat", (10, 10, 20, 20)), ("car", (40, 40, 60, 60))],
        },
    )
    cfg = EvalConfig(
        model="resnet10_os16",
        data=f"voc:{root}",
        checkpoint=str(tmp_path / "voc.safetensors"),
        poolings=("gap",),
        methods=("gradcam",),
        baselines=(),
        metrics=("recognition", "localization"),
        multilabel_targets="all",
        scores="sigmoid",
        size=32,
        resize=32,
        batch_size=2,
        out=str(tmp_path / "out"),
    )
    runner = Runner(cfg, progress=False)
    results = runner.run()
    rows, _ = read_shards(tmp_path / "out", "resnet10_os16-gap-gradcam")
    expected = {(i, int(c)) for i in runner.indices for c in runner.dataset[i][1].nonzero().flatten()}
    assert set(rows) == expected and len(expected) == 6  # one row per (image, positive class)
    model = runner.models["resnet10_os16"].eval()
    for (i, c), row in rows.items():
        image = runner.dataset[i][0][None]
        cam = castream.saliency.GradCAM(model)(image, [c])
        with torch.no_grad():
            p = torch.sigmoid(model(image)[0, c]).item()
            o = torch.sigmoid(model(runner.preprocess.mask(image, cam))[0, c]).item()
        assert row["ad"] == pytest.approx(max(p - o, 0) / p, abs=1e-5)
    cell = results["cells"][0]
    assert cell["images"] == 3 and cell["rows"] == 6
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "3 (6 image-class pairs)" in markdown and "Probabilities: per-class sigmoids" in markdown
    with pytest.raises(ValueError, match="multilabel_targets must be one of"):
        EvalConfig(**{**cfg.to_dict(), "multilabel_targets": "every"})
    with pytest.raises(ValueError, match="scores must be one of"):
        EvalConfig(**{**cfg.to_dict(), "scores": "logits"})


# --- precision, memory format and the overlapped runner (issue 19) -------------------------------------


def _cell_rows(out, cell):
    from castream.evaluate.results import read_shards

    return read_shards(out, cell)[0]


def test_runner_bf16_and_channels_last_agree_with_float32(artifacts, tmp_path):
    """``amp="bf16"`` (CPU autocast here) and ``channels_last`` change only rounding: every per-image value
    stays close to the float32 run's, and the records (one per image, in batch order) are complete."""
    metrics_ = ("recognition", "insertion", "deletion", "localization")
    runs = {}
    for name, kw in {"fp32": {}, "bf16": {"amp": "bf16", "channels_last": True}}.items():
        cfg = config(
            artifacts,
            tmp_path / name,
            methods=("gradcam",),
            poolings=("gap",),
            stream=None,
            metrics=metrics_,
            **kw,
        )
        Runner(cfg, progress=False, log=lambda *_: None).run()
        runs[name] = _cell_rows(tmp_path / name, "resnet10_os16-gap-gradcam")
    assert runs["fp32"].keys() == runs["bf16"].keys() and len(runs["fp32"]) == 9
    for index, row in runs["fp32"].items():
        other = runs["bf16"][index]
        for key in ("insertion", "deletion", "ad", "ep"):
            assert abs(row[key] - other[key]) < 0.05, (index, key)
    lines = (tmp_path / "bf16" / "shards" / "resnet10_os16-gap-gradcam.rank0.jsonl").read_text().splitlines()
    order = [r["index"] for line in lines for r in json.loads(line)["images"]]
    assert order == sorted(order)  # the host thread appends batches in order


def test_eval_config_checks_precision_options(artifacts, tmp_path):
    with pytest.raises(ValueError, match="amp must be"):
        config(artifacts, tmp_path, amp="int8")
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        config(artifacts, tmp_path, channels_last="yes")


def test_a_failing_host_step_surfaces_and_keeps_finished_batches(artifacts, tmp_path, monkeypatch):
    """An error in the background host work (here: localization) is raised by the run, and the batches
    finished before it stay in the shard, so a rerun resumes."""
    cfg = config(artifacts, tmp_path, methods=("gradcam",), poolings=("gap",), stream=None, baselines=())
    runner = Runner(cfg, progress=False, log=lambda *_: None)
    calls = []
    original = runner._metrics

    def failing(side, *args):
        if side == "host":
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("host step failed")
        return original(side, *args)

    monkeypatch.setattr(runner, "_metrics", failing)
    runner.claim()
    with pytest.raises(RuntimeError, match="host step failed"):
        runner.evaluate_cell("resnet10_os16", "gap", "gradcam")
    assert len(runner.finished("resnet10_os16-gap-gradcam")) == 3  # the first batch of 3


def test_voc_image_without_objects_is_skipped_not_explained_as_class_0(tmp_path):
    """An annotation with no object has no class to explain; it was explained as class 0 and counted in
    AD/AG/AI (issue 21). It is skipped with its reason, like an unreadable image."""

    from castream.evaluate.results import read_shards

    root = _voc_folder(
        tmp_path,
        {
            "2008_000001": [("dog", (1, 1, 30, 40))],
            "2008_000002": [],
            "2008_000003": [("cat", (5, 5, 50, 50))],
        },
    )
    cfg = EvalConfig(
        model="resnet10_os16",
        data=f"voc:{root}",
        checkpoint=str(tmp_path / "voc.safetensors"),
        poolings=("gap",),
        methods=("gradcam",),
        baselines=(),
        metrics=("recognition",),
        size=32,
        resize=32,
        batch_size=3,
        out=str(tmp_path / "out"),
    )
    runner = Runner(cfg, progress=False, log=lambda *_: None)
    runner.run()
    empty = runner.dataset.samples.index(next(s for s in runner.dataset.samples if "000002" in str(s.path)))
    rows, _ = read_shards(tmp_path / "out", "resnet10_os16-gap-gradcam")
    assert empty not in rows and len(rows) == 2
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "1 image(s) without an object to explain" in markdown and "**Incomplete:**" not in markdown


# --- stale, foreign and user files (issue 21, items 1-4) ---------------------------------------------


def _small(artifacts, out, **kw):
    options = dict(methods=("gradcam",), poolings=("gap",), stream=None, baselines=(), images=6)
    return config(artifacts, out, **{**options, "metrics": ("recognition",), **kw})


def test_a_checkpoint_changed_in_place_is_not_served_the_old_results(artifacts, tmp_path):
    """The run folder is tied to the weights' content, not their path: other weights at the same path are
    refused with the reason, and give other results in a new folder."""
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(artifacts["checkpoint"].read_bytes())
    quiet = {"progress": False, "log": lambda *_: None}
    Runner(_small(artifacts, tmp_path / "a", checkpoint=str(weights)), **quiet).run()
    save_weights(build_model("resnet10_os16", num_classes=3, seed=1), weights)
    with pytest.raises(ValueError, match=r"the weights of resnet10_os16 changed .*replaced at the same path"):
        Runner(_small(artifacts, tmp_path / "a", checkpoint=str(weights)), **quiet).run()
    Runner(_small(artifacts, tmp_path / "b", checkpoint=str(weights)), **quiet).run()
    assert read_csv(tmp_path / "a" / "results.csv") != read_csv(tmp_path / "b" / "results.csv")


def test_foreign_and_duplicate_shard_records_are_ignored_with_a_warning(artifacts, tmp_path):
    """A record of another run (another seed's images) placed in a shard, and a second copy of a record,
    are not averaged in: the run recomputes what they replaced, warns, and the report says so."""
    logs = []
    Runner(_small(artifacts, tmp_path / "a"), progress=False, log=lambda *_: None).run()
    Runner(_small(artifacts, tmp_path / "b", seed=3), progress=False, log=lambda *_: None).run()
    name = "shards/resnet10_os16-gap-gradcam.rank0.jsonl"
    own, foreign = ((tmp_path / d / name).read_text().splitlines() for d in "ab")
    assert json.loads(own[0])["run"] != json.loads(foreign[0])["run"]
    (tmp_path / "a" / name).write_text("\n".join([foreign[0], *own[1:], own[1]]) + "\n")
    expected = read_csv(tmp_path / "a" / "results.csv")
    Runner(_small(artifacts, tmp_path / "a"), progress=False, log=logs.append).run()
    assert read_csv(tmp_path / "a" / "results.csv") == expected
    warnings = [m for m in logs if m.startswith("warning:")]
    assert any("another run" in m for m in warnings) and any("second record" in m for m in warnings)
    markdown = (tmp_path / "a" / "results.md").read_text()
    assert "**Ignored records:** 2 shard record(s)" in markdown


def test_evaluate_refuses_a_folder_of_user_files(artifacts, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.md").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"results\.md; no config\.json"):
        Runner(_small(artifacts, out), progress=False, log=lambda *_: None).run()
    assert (out / "results.md").read_text() == "my notes" and sorted(out.iterdir()) == [out / "results.md"]


def test_explain_replaces_its_own_files_but_not_the_users(tmp_path, capsys):
    """A rerun replaces what castream wrote; a file of the user's (or one edited since) is refused unless
    --overwrite, and then nothing is written."""
    Image.fromarray((np.random.rand(40, 40, 3) * 255).astype(np.uint8)).save(tmp_path / "cat.png")
    out = tmp_path / "out"
    options = ["--model", "resnet18", "--num-classes", "4", "--size", "64", "--out", str(out)]
    args = ["explain", str(tmp_path / "cat.png"), *options]
    assert main(args) == 0 and main(args) == 0
    (out / "cat_gradcam.png").write_bytes(b"my edit")
    assert main(args) == 1
    assert "castream did not write there" in capsys.readouterr().err
    assert (out / "cat_gradcam.png").read_bytes() == b"my edit"
    assert main([*args, "--overwrite"]) == 0 and (out / "cat_gradcam.png").read_bytes() != b"my edit"
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "b" / "cat.png")
    assert main(["explain", str(tmp_path / "cat.png"), str(tmp_path / "b" / "cat.png"), *options]) == 2
    assert "the same file name" in capsys.readouterr().err


@pytest.mark.slow
def test_report_benchmark_times_a_run_whose_records_are_all_copied(capsys):
    """``castream bench report``: the copied records cover the large run (the benchmark raises if its
    report stage had to compute any cell), and its JSON names images, seconds and peak memory."""
    from castream.bench import report

    report.main(["--images", "40", "--base", "8", "--protocol", "coarse"])
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["images"] == 40 and record["cells"] == 10
    assert record["seconds"] > 0 and 0 < record["peak_rss_gb"] < 64 and record["shard_gb"] > 0


def test_report_re_renders_a_finished_or_interrupted_run(artifacts, tmp_path, capsys):
    out = tmp_path / "run"
    Runner(config(artifacts, out, methods=("gradcam",), images=6), progress=False).run()
    written = (out / "results.csv").read_text()
    for name in ("results.csv", "results.md", "results.json"):
        (out / name).unlink()
    assert main(["report", str(out), "--quiet"]) == 0
    assert (out / "results.csv").read_text() == written and (out / "results.md").is_file()
    # interrupted: the last record of one cell is gone; the report covers the images that remain
    shard = out / "shards" / "resnet10_os16-ca-gradcam.rank0.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:-1]))
    left = sum(len(json.loads(line)["images"]) for line in lines[:-1])
    assert main(["report", str(out), "--quiet"]) == 0
    rows = {(r["pooling"], r["method"]): r for r in read_csv(out / "results.csv")}
    assert int(rows[("ca", "gradcam")]["images"]) == left < 6 == int(rows[("gap", "gradcam")]["images"])
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_the_report_draws_the_maps_saved_during_the_run(artifacts, tmp_path, monkeypatch):
    from castream.evaluate import figures
    from castream.evaluate.report import write_report

    cfg = config(artifacts, tmp_path, methods=("gradcam",), images=6)
    runner = Runner(cfg, progress=False)
    runner.run()
    grid = runner.figure_indices()
    saved = sorted(p.name for p in (tmp_path / "maps" / "resnet10_os16-ca-gradcam").iterdir())
    assert len(saved) == len(grid) and {int(n.split("-")[0]) for n in saved} == set(grid)
    _, images, labels, _, _ = runner._load(grid)
    targets = runner._targets(labels, runner.logits("resnet10_os16", "ca", images))
    maps, found = figures._saved(tmp_path, "resnet10_os16-ca-gradcam", grid)
    assert found == targets.tolist()
    expected = runner.build_method("gradcam", "resnet10_os16", "ca")(images, targets)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)  # the same maps, from other batches
    inputs = torch.from_numpy(np.load(tmp_path / "maps" / "inputs.npy"))
    torch.testing.assert_close(inputs, images)

    def no_model(*args, **kwargs):
        raise AssertionError("the report used a model")

    # the report renders from the stored files: no model is built, no method called
    monkeypatch.setattr(castream.saliency.GradCAM, "__call__", no_model)
    monkeypatch.setattr(castream.models, "build_model", no_model)
    monkeypatch.setattr(castream.evaluate.runner, "load_classifier", no_model)
    (tmp_path / "saliency_grid.png").unlink()
    (tmp_path / "results.csv").rename(tmp_path / "before.csv")
    write_report(tmp_path)
    assert (tmp_path / "saliency_grid.png").is_file()
    assert (tmp_path / "results.csv").read_text() == (tmp_path / "before.csv").read_text()


def test_correct_predictions_only(artifacts, tmp_path):
    """Thesis §1.3.4: only the images the frozen GAP classifier gets right are explained, under GAP and
    CA alike (the same images, so the comparisons stay paired); the others are skipped and counted."""
    from castream.evaluate.results import read_cell

    cfg = config(artifacts, tmp_path, methods=("gradcam",), metrics=("recognition",), correct_only=True)
    runner = Runner(cfg, progress=False)
    runner.run()
    model = runner.models["resnet10_os16"]
    images = torch.stack([runner.dataset[i][0] for i in runner.indices])
    labels = torch.tensor([runner.dataset[i][1] for i in runner.indices])
    with torch.no_grad():
        right = model(images, pooling="gap").argmax(1) == labels
    expected = {i for i, r in zip(runner.indices, right.tolist()) if r}
    assert 0 < len(expected) < len(runner.indices)  # the fixture's classifier errs on some images
    for pooling in ("gap", "ca"):
        records = read_cell(tmp_path, f"resnet10_os16-{pooling}-gradcam")
        assert set(records.rows) == expected and set(records.skipped) == set(runner.indices) - expected
    assert set(read_cell(tmp_path, "resnet10_os16-gap-accuracy").rows) == set(runner.indices)
    markdown = (tmp_path / "results.md").read_text()
    assert f"the {len(runner.indices) - len(expected)} image(s) the GAP classifier misclassifies" in markdown
    with pytest.raises(ValueError, match="needs targets='labels'"):
        config(artifacts, tmp_path / "x", correct_only=True, targets="predicted")


# --- variants side by side (issue 30 item 7) ------------------------------------------------------------


def test_stream_variants_and_method_variants_are_cells_of_their_own(artifacts, tmp_path):
    """Several labelled streams of one classifier (CA cells each, no repeated GAP) and labelled method
    variants (``opticam[objective=diff]``) are cells of their own; the claims of the seeds' ablation
    tables pair them by their settings, and their numbers are the per-image differences of those cells."""
    import json

    from castream.evaluate.results import read_cell
    from castream.evaluate.store import cell_name

    classifier = castream.models.load_weights(
        build_model("resnet10_os16", num_classes=3), artifacts["checkpoint"]
    )
    streams = {}
    for label, kw in (("s4", {"start": 4}), ("proj", {"block": "proj"})):
        torch.manual_seed(1)
        stream = castream.attach_stream(classifier, probe_size=32, **kw)
        streams[label] = str(castream.save_stream(stream, tmp_path / f"{label}.safetensors"))
    methods = ("gradcam", "opticam", "opticam[objective=diff]")
    steps = {"opticam": {"max_iter": 2}, "opticam[objective=diff]": {"max_iter": 2}}
    cfg = config(
        artifacts,
        tmp_path / "run",
        methods=methods,
        metrics=("recognition", "insertion"),
        streams=streams,
        method_options=steps,
        baselines=(),
    )
    Runner(cfg, progress=False).run()
    out = tmp_path / "run"
    rows = {(r["model"], r["pooling"], r["method"]) for r in read_csv(out / "results.csv")}
    assert ("s4", "ca", "opticam[objective=diff]") in rows and ("proj", "ca", "gradcam") in rows
    assert not any(m in streams and p == "gap" for m, p, _ in rows)  # their GAP is the classifier's
    assert len({cell_name(*cell) for cell in rows}) == len(rows)
    found = {(e["id"], e["model"]): e for e in json.loads((out / "results.json").read_text())["claims"]}
    main = "resnet10_os16"
    objective = found[("opti-cam/objective/range", main)]
    placement = found[("ca-stream/placement/gradcam", f"{main} vs s4")]
    assert ("ca-stream/block", f"{main} vs proj") in found
    assert ("ca-stream/placement/gradcam", f"{main} vs proj") not in found  # they differ in two settings
    assert objective["verdict"] == "inconclusive" and objective["images_to_decide"] == 30  # 9 images
    for entry, (a, b), key in (
        (objective, ((main, "gap", "opticam[objective=diff]"), (main, "gap", "opticam")), "ag"),
        (placement, (("s4", "ca", "gradcam"), (main, "ca", "gradcam")), "ai"),
    ):
        first, second = (read_cell(out, cell_name(*c)).rows for c in (a, b))
        by_hand = sum(second[i][key] - first[i][key] for i in first) / len(first)
        assert entry["metrics"][key]["mean"] == pytest.approx(by_hand, abs=1e-9)


def test_method_variant_names_are_checked():
    from castream import saliency

    assert saliency.split_spec("opticam[objective=diff,max_iter=3]") == (
        "opticam",
        {"objective": "diff", "max_iter": 3},
    )
    assert saliency.split_spec("sacam[perturbations=[1,2]]") == ("sacam", {"perturbations": [1, 2]})
    assert saliency.canonical("GradCAMpp") == saliency.canonical("gradcam++")
    for bad, fragment in (
        ("opticam[objective]", "key=value"),
        ("opticam[objective=diff", "NAME\\[key=value"),
        ("opticam[objective=a,objective=b]", "twice"),
        ("opticam[colour=red]", "has no option \\['colour'\\]"),
    ):
        with pytest.raises(ValueError, match=fragment):
            saliency.spec(bad)


def test_variant_configs_are_refused_when_ambiguous(artifacts, tmp_path):
    with pytest.raises(ValueError, match="are the same method"):
        config(artifacts, tmp_path, methods=("gradcam++", "gradcampp"))
    with pytest.raises(ValueError, match="inline and again"):
        config(
            artifacts,
            tmp_path,
            methods=("opticam[max_iter=2]",),
            method_options={"opticam[max_iter=2]": {"max_iter": 3}},
        )
    with pytest.raises(ValueError, match="used twice"):
        Runner(
            config(artifacts, tmp_path, streams={"resnet10_os16": str(artifacts["stream"])}), progress=False
        )


def test_road_group_in_the_runner(artifacts, tmp_path):
    """The ``road`` group (issue 31): MoRF, LeRF and their combination per image, through the registry."""
    from castream.evaluate.results import read_cell

    cfg = config(
        artifacts,
        tmp_path,
        methods=("gradcam",),
        metrics=("road",),
        images=3,
        baselines=(),
        poolings=("gap",),
        stream=None,
        metric_options={"road": {"percentiles": [30, 70]}},
    )
    Runner(cfg, progress=False).run()
    rows = read_cell(tmp_path, "resnet10_os16-gap-gradcam").rows
    assert len(rows) == 3
    for row in rows.values():
        assert row["road_combined"] == pytest.approx((row["road_lerf"] - row["road_morf"]) / 2, abs=1e-6)
    assert "ROAD MoRF" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="order"):
        config(artifacts, tmp_path / "x", metrics=("road",), metric_options={"road": {"order": "lerf"}})
