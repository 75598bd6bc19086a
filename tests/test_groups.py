"""The metric-group registry (issue 29): a group registered in one place is seen end to end, and every
registered group returns the keys and shapes it declares."""

import csv
import json

import pytest
import torch

import castream
from castream.data import SyntheticShapes, eval_transform
from castream.data.synthetic import generate
from castream.evaluate import EvalConfig, Runner, groups
from castream.models import build_model, save_weights


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """A tiny synthetic set, a random classifier and an untrained stream on it (the registry's tests need
    values, not good ones)."""
    tmp = tmp_path_factory.mktemp("groups")
    root = generate(tmp / "synth", classes=3, train=0, val=8, size=32, workers=1)
    torch.manual_seed(0)
    classifier = build_model("resnet10_os16", num_classes=3)
    save_weights(classifier, tmp / "model.safetensors")
    castream.save_stream(castream.attach_stream(classifier, probe_size=32), tmp / "stream.safetensors")
    return {"root": root, "checkpoint": tmp / "model.safetensors", "stream": tmp / "stream.safetensors"}


def _config(files, out, **kw) -> EvalConfig:
    base = dict(
        model="resnet10_os16",
        data=f"synthetic:{files['root']}",
        checkpoint=str(files["checkpoint"]),
        stream=str(files["stream"]),
        methods=("gradcam",),
        baselines=("fakecam",),
        images=8,
        batch_size=4,
        size=32,
        resize=32,
        out=str(out),
    )
    return EvalConfig(**{**base, **kw})


def toy_metric(maps: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """The toy group's per-image value: the map's mean times ``scale``."""
    return maps.flatten(1).mean(1) * scale


@pytest.fixture
def toy_group():
    table = groups.register_table(groups.Table("toy", "Toy table (a test's own group)"))
    group = groups.register_group(
        groups.MetricGroup(
            "toy",
            (groups.Column("toy_mass", "TOY", compared=True, table="toy"),),
            lambda ctx: {"toy_mass": toy_metric(ctx.maps, **ctx.options)},
            options_of=toy_metric,
        )
    )
    yield group
    groups.unregister_group("toy")
    groups.TABLES.pop(table.name)


def test_a_registered_group_is_seen_end_to_end(run_files, tmp_path, toy_group):
    # option checks come from the group's function
    with pytest.raises(ValueError, match=r"toy has no option 'size'; it takes \['scale'\]"):
        _config(run_files, tmp_path / "bad", metrics=("toy",), metric_options={"toy": {"size": 2}})
    config = _config(
        run_files, tmp_path / "run", metrics=("recognition", "toy"), metric_options={"toy": {"scale": 2.0}}
    )
    results = Runner(config, progress=False, log=lambda *a: None).run()
    # the shards hold its values: the formula evaluated on the saved maps of the grid images
    run = tmp_path / "run"
    rows = {}
    for line in (run / "shards" / "resnet10_os16-gap-gradcam.rank0.jsonl").read_text().splitlines():
        rows.update({r["index"]: r for r in json.loads(line)["images"]})
    saved = sorted((run / "maps" / "resnet10_os16-gap-gradcam").glob("*.npy"))
    assert saved
    import numpy as np

    for path in saved:
        index = int(path.stem.split("-")[0])
        expected = float(np.load(path).astype(np.float64).mean() * 2.0)
        assert rows[index]["toy_mass"] == pytest.approx(expected, rel=1e-5)
    # the CSV has its columns, with the interval
    with open(run / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert {"toy_mass", "toy_mass_low", "toy_mass_high"} <= set(table[0])
    gap = next(r for r in table if r["pooling"] == "gap" and r["method"] == "gradcam")
    mean = sum(r["toy_mass"] for r in rows.values()) / len(rows)
    assert float(gap["toy_mass"]) == pytest.approx(mean * 100, abs=1e-5)
    # the report has its table, titled as declared, and compares it GAP vs CA
    text = (run / "results.md").read_text()
    assert "## Toy table (a test's own group)" in text and "TOY↑" in text and "ΔTOY" in text
    compared = next(c for c in results["comparisons"] if c["method"] == "gradcam")
    assert "toy_mass" in compared["metrics"]
    # the per-image table: one row per image and method cell, every per-image metric as stored
    with open(run / "per_image.csv") as f:
        per_image = list(csv.DictReader(f))
    assert len(per_image) == 4 * 8  # gradcam and fakecam under GAP and CA
    assert {"model", "pooling", "method", "index", "target", "ad", "ag", "ai", "toy_mass"} <= set(
        per_image[0]
    )
    mine = {int(r["index"]): r for r in per_image if r["pooling"] == "gap" and r["method"] == "gradcam"}
    for index, row in rows.items():
        assert float(mine[index]["toy_mass"]) == pytest.approx(row["toy_mass"], rel=1e-8)
        assert float(mine[index]["ad"]) == pytest.approx(row["ad"], rel=1e-8)


def _context(group, model, method, images, maps, targets, meta) -> groups.Context:
    scorer = castream.Scorer(model, forward_kwargs={"pooling": "gap"}, batch_size=64)
    device = group.side == "device"
    with torch.no_grad():
        logits = scorer.logits(images).float()
    hosts = images.flip(0)[:, None].repeat(1, 3, 1, 1, 1)  # (B, cases, C, H, W): other images as hosts
    return groups.Context(
        scorer=scorer,
        method=method,
        images=images if device else None,
        maps=maps,
        targets=targets,
        logits=logits,
        indices=list(range(len(images))),
        meta=meta,
        preprocess=castream.Preprocess.named("imagenet"),
        protocol="coarse",
        seed=0,
        options=group.options({"samples": 2} if group.name == "max-sensitivity" else {}),
        hosts=lambda cases: hosts[:, :cases],
    )


def test_every_registered_group_returns_its_declared_keys_and_shapes(run_files):
    dataset = SyntheticShapes(run_files["root"], "val", transform=eval_transform(32, resize=32))
    items = [dataset[i] for i in range(4)]
    images = torch.stack([i[0] for i in items])
    meta = [i[2] for i in items]
    targets = torch.tensor([i[1] for i in items])
    torch.manual_seed(0)
    model = castream.attach_stream(build_model("resnet10_os16", num_classes=3), probe_size=32).eval()
    method = castream.saliency.get("gradcam")(model, forward_kwargs={"pooling": "gap"})
    maps = method(images, targets)
    assert set(groups.GROUPS) >= {
        "recognition", "insertion", "deletion", "localization", "discrimination", "box-study", "aopc",
        "max-sensitivity", "adcc", "adversarial",
    }  # fmt: skip
    for name, group in groups.GROUPS.items():
        ctx = _context(group, model, method, images, maps, targets, meta)
        values = group.run(ctx)
        declared = {c.key for c in group.columns if not c.derived} | set(group.stored) | set(group.curves)
        assert set(values) == declared, name
        for key, v in values.items():
            assert isinstance(v, torch.Tensor) and v.shape[0] == 4 and v.dim() in (1, 2), (name, key)
            assert v.dim() == 2 or key not in group.curves, (name, key)
        derived = {c.key for c in group.columns if c.derived}
        if derived:  # built from the stored values when the records are read
            arrays = {k: v.double().numpy() for k, v in values.items()}
            if name == "deletion":
                arrays["insertion"] = arrays["deletion"] + 0.25
            assert derived <= set(groups.derive(arrays)), name
