"""The demo on CI-sized configurations: the shipped weights and the --retrain path produce every file."""

import csv
import json

import pytest
import torch

from castream import demo
from castream.cli import main
from castream.demo import DemoConfig, run_demo

TINY_EVAL = {"eval_images": 8, "method_images": {"scorecam": 2, "opticam": 2}, "metric_batch": 64}
FILES = ("results.md", "results.json", "results.csv", "saliency_grid.png", "curves.png", "ad_ag.png")


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _check_report(report, images: int) -> dict:
    for name in FILES:
        assert (report / name).is_file(), name
    rows = {(r["pooling"], r["method"]): r for r in _rows(report / "results.csv")}
    methods = ("gradcam", "gradcam++", "scorecam", "opticam", "fakecam", "random")
    assert set(rows) == {(p, m) for p in ("gap", "ca") for m in methods}
    assert rows[("gap", "scorecam")]["images"] == "2" and rows[("ca", "gradcam")]["images"] == str(images)
    for key in ("ad", "ag", "insertion", "discrimination", "sp_target", "sp"):
        assert key in rows[("gap", "random")], key
    markdown = (report / "results.md").read_text()
    assert "4 × 4 feature maps" in markdown and "## GAP vs CA (paired studentized bootstrap" in markdown
    assert "## Class discrimination" in markdown and "## Demo setup" in markdown
    assert "p(true class)" in markdown and "castream train classifier" in markdown
    results = json.loads((report / "results.json").read_text())
    compared = {(c["method"]) for c in results["comparisons"]}
    assert compared == set(methods) and all(
        "significant" in v for v in results["comparisons"][0]["metrics"].values()
    )
    assert results["summary"] and results["summary"] in markdown
    # the seeds' claims this configuration covers, each with a verdict computed from the numbers
    ids = {c["id"] for c in results["claims"]}
    assert {"ca-stream/gradcam", "ca-stream/scorecam", "ca-stream/accuracy", "opti-cam/classification"} <= ids
    assert all(c["verdict"] in ("reproduced", "contradicted", "inconclusive") for c in results["claims"])
    assert "## Claims of the papers, checked" in markdown and "Claims of the papers this" in markdown
    return results


def test_demo_with_shipped_weights(tmp_path):
    config = DemoConfig(**TINY_EVAL)
    run_demo(tmp_path / "demo", config, progress=False, log=lambda m: None)
    results = _check_report(tmp_path / "demo" / "report", 8)
    accuracy = {m["pooling"]: m["accuracy"] for m in results["models"]}
    assert 0 < accuracy["gap"]["probability"]["mean"] <= 1
    # a second run reuses the cached evaluation: no shard grows
    shards = sorted((tmp_path / "demo" / "cache").glob("eval-*/shards/*.jsonl"))
    sizes = [p.stat().st_size for p in shards]
    run_demo(tmp_path / "demo", config, progress=False, log=lambda m: None)
    assert [p.stat().st_size for p in shards] == sizes


def test_demo_refuses_changed_training_without_retrain_and_foreign_report(tmp_path):
    with pytest.raises(ValueError, match="retrain"):
        run_demo(tmp_path, DemoConfig(classifier_epochs=1), progress=False, log=lambda m: None)
    report = tmp_path / "out" / "report"
    report.mkdir(parents=True)
    (report / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        demo._copy_report(tmp_path, report, note="")
    assert (report / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_demo_retrain_path_trains_both_stages(tmp_path):
    config = DemoConfig(
        train_images=48, val_images=24, classifier_epochs=1, stream_epochs=1, batch_size=16, **TINY_EVAL
    )
    run_demo(tmp_path, config, retrain=True, progress=False, log=lambda m: None)
    _check_report(tmp_path / "report", 8)
    for path in ("cache/classifier/model.safetensors", "cache/stream/stream.safetensors"):
        assert (tmp_path / path).is_file(), path
    assert "trained in this run" in (tmp_path / "report" / "results.md").read_text()


def test_shipped_weights_match_the_demo_model():
    from castream import load_stream
    from castream.models import build_model, load_weights

    config = DemoConfig()
    model = load_weights(
        build_model(config.model, num_classes=config.classes), demo.WEIGHTS / "classifier.safetensors"
    )
    stream = load_stream(model, demo.WEIGHTS / "stream.safetensors").eval()
    with torch.no_grad():
        logits = stream(torch.zeros(2, 3, config.size, config.size))
    assert logits.shape == (2, config.classes) and stream.attention[-1].shape == (2, 4, 4)


def test_demo_cli_help_names_retrain(capsys):
    assert main(["demo", "--help"]) == 0
    assert "--retrain" in capsys.readouterr().out


def test_demo_cache_follows_the_weights_content(tmp_path, monkeypatch):
    """Weights changed in place never lend their cached results: the evaluation folder is named after the
    weights' content (it was named after their path, and the demo reported the old weights' accuracy)."""
    from castream.models import read_state, save_weights

    shipped = tmp_path / "weights"
    shipped.mkdir()
    for name in ("classifier.safetensors", "stream.safetensors"):
        (shipped / name).write_bytes((demo.WEIGHTS / name).read_bytes())
    monkeypatch.setattr(demo, "WEIGHTS", shipped)
    config = DemoConfig(**TINY_EVAL)
    quiet = {"progress": False, "log": lambda m: None}
    before = run_demo(tmp_path / "demo", config, **quiet)["models"][0]["accuracy"]["probability"]["mean"]
    state = read_state(shipped / "classifier.safetensors")
    state["fc.weight"] = -state["fc.weight"]  # other weights at the same path: the least likely class wins
    model = demo.build_model("resnet10_os16", num_classes=6)
    model.load_state_dict(state)
    save_weights(model, shipped / "classifier.safetensors")
    with pytest.raises(ValueError, match="trained on backbone weights"):  # the stream is tied to them
        run_demo(tmp_path / "demo", config, **quiet)
    _retie_stream(shipped / "stream.safetensors", model)  # as a stream trained on the new weights would be
    after = run_demo(tmp_path / "demo", config, **quiet)["models"][0]["accuracy"]["probability"]["mean"]
    assert after < before / 2
    assert len(list((tmp_path / "demo" / "cache").glob("eval-*"))) == 2


def _retie_stream(path, backbone) -> None:
    """The stream file with the same tensors, recorded as trained on ``backbone``."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from castream.utils import state_digest

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(str(path)), str(path), metadata={**metadata, "backbone": state_digest(backbone)})
