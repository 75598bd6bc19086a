"""A researcher's first run: their pretrained head kept, maps that see what the pooling sees, statistics
never guessed."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import castream
from castream import metrics, saliency
from castream.data.classes import imagenet_classes, label_map
from castream.evaluate import EvalConfig, Runner
from castream.models import build_model, output_classes

from _models import TinyNet, lite_net

FACTORY = """
import torch
from castream.models import resnet10_os16

def net():
    torch.manual_seed(1)
    model = resnet10_os16(num_classes={classes})
    model.class_names = {names!r}
    return model
"""


def photo_folder(root, classes, per_class=2, size=32):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    return root


def factory(tmp_path, names):
    path = tmp_path / "net.py"
    path.write_text(FACTORY.format(classes=len(names), names=list(names)))
    return f"{path}:net"


def evaluate(tmp_path, model, data, out="run", **kw):
    config = EvalConfig(
        model=model,
        data=data,
        out=str(tmp_path / out),
        poolings=("gap",),
        methods=("gradcam",),
        metrics=("recognition",),
        baselines=(),
        size=32,
        resize=32,
        batch_size=4,
        **kw,
    )
    return Runner(config, progress=False, log=lambda m: None)


NAMES = [f"class{i}" for i in range(10)]


def test_a_pretrained_head_is_never_replaced(tmp_path):
    spec = factory(tmp_path, NAMES)
    data = f"folder:{photo_folder(tmp_path / 'photos', ['apple', 'pear', 'plum'])}"
    with pytest.raises(ValueError, match="never replaces a model's head"):
        evaluate(tmp_path, spec, data)
    reference = build_model(spec)
    # a class map: the accuracy is measured against the model's own classes, with its own head
    (tmp_path / "map.json").write_text(json.dumps({"apple": 7, "pear": "class2", "plum": 0}))
    runner = evaluate(tmp_path, spec, data, class_map=str(tmp_path / "map.json"))
    model = runner.models[spec]
    assert output_classes(model) == 10
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values())
    )
    assert runner.labels_map.tolist() == [7, 2, 0]
    results = runner.run()
    accuracy = results["models"][0]["accuracy"]
    with torch.no_grad():
        x = torch.stack([runner.dataset[i][0] for i in runner.indices])
        predicted = reference.eval()(x).argmax(1)
    expected = (predicted == torch.tensor([7, 7, 2, 2, 0, 0])).double().mean().item()
    assert accuracy["value"] == pytest.approx(expected)


def test_folders_named_by_model_classes_or_predicted_targets(tmp_path):
    spec = factory(tmp_path, NAMES)
    runner = evaluate(tmp_path, spec, f"folder:{photo_folder(tmp_path / 'a', ['class4', 'Class9'])}")
    assert runner.labels_map.tolist() == [9, 4]  # sorted folders: Class9, class4
    runner = evaluate(
        tmp_path, spec, f"folder:{photo_folder(tmp_path / 'b', ['x', 'y'])}", out="p", targets="predicted"
    )
    assert not runner.labelled
    results = runner.run()
    assert results["models"][0]["accuracy"]["value"] is None
    assert "no accuracy" in (tmp_path / "p" / "results.md").read_text()


def test_imagenet_wnids_and_names_map_to_the_standard_order():
    wnids, names = imagenet_classes()
    assert len(wnids) == len(names) == 1000 and list(wnids) == sorted(wnids)
    assert (wnids[0], names[0]) == ("n01440764", "tench") and names[967] == "espresso"
    model = torch.nn.Linear(2, 1000)
    assert label_map(["n01440764", "espresso", "Tabby"], model, 1000) == [0, 967, 281]


def test_models_castream_builds_are_seeded():
    a, b = build_model("resnet18", num_classes=3), build_model("resnet18", num_classes=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_model("resnet18", num_classes=3, seed=1)
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_a_factory_is_not_given_another_head(tmp_path):
    with pytest.raises(ValueError, match="does not replace its head"):
        build_model(factory(tmp_path, NAMES), num_classes=3)


def negative_lite():
    """A LiteNet whose last BatchNorm outputs are mostly negative (as Lite0's _bn1: 93.6%)."""
    model = lite_net(64, 5)
    with torch.no_grad():
        model._bn1.bias.fill_(-1.2)
    return model


def test_cam_methods_see_the_map_the_pooling_sees():
    model, x = negative_lite(), torch.rand(2, 3, 64, 64)
    captured = []
    handle = model._bn1.register_forward_hook(lambda m, a, out: captured.append(out))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    assert (captured[0] < 0).float().mean() > 0.9
    pooled = torch.nn.functional.relu6(captured[0])
    # closed form of Grad-CAM on GAP + Linear: d y_c / d A = fc.weight[c] / (h w) * relu6'(A)
    target = logits.argmax(1)
    inside = ((captured[0] > 0) & (captured[0] < 6)).float()
    weights = (model._fc.weight[target][:, :, None, None] * inside).mean((2, 3)) / inside[0, 0].numel()
    raw = torch.relu(torch.einsum("bk,bkhw->bhw", weights, pooled))
    expected = castream.maps.finalize_maps(raw, (64, 64), normalize=True)
    found = saliency.GradCAM(model)(x)
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-zero warning
        scores = saliency.ScoreCAM(model, preprocess=castream.Preprocess())(x)
    assert (scores.flatten(1).amax(1) == 1).all()


def test_an_all_zero_map_is_a_warning_naming_method_and_layer():
    model = TinyNet(dead=tuple(range(16))).eval()
    with pytest.warns(RuntimeWarning, match=r"GradCAM at layer features\.4: the map of image\(s\) \[0, 1\]"):
        maps = saliency.GradCAM(model, layer="features.4")(torch.rand(2, 3, 16, 16))
    assert maps.abs().sum() == 0


def test_statistics_come_from_the_model_or_are_an_error():
    model, x = TinyNet().eval(), torch.rand(2, 3, 16, 16)
    del model.castream_preprocess  # the tests' TinyNet declares ImageNet's statistics
    maps = torch.rand(2, 16, 16)
    with pytest.raises(ValueError, match="never guesses"):
        metrics.recognition(model, x, maps, None)
    with pytest.raises(ValueError, match="never guesses"):
        saliency.ScoreCAM(model)
    stats = castream.Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3)
    explicit = metrics.recognition(model, x, maps, None, preprocess=stats)
    model.pretrained_cfg = {"mean": (0.5,) * 3, "std": (0.5,) * 3}  # as timm models declare them
    declared = metrics.recognition(model, x, maps, None)
    torch.testing.assert_close(declared["drop"], explicit["drop"], rtol=0, atol=0)
    other = metrics.recognition(model, x, maps, None, preprocess=castream.Preprocess())
    assert not torch.equal(other["o"], explicit["o"])
    del model.pretrained_cfg
    stream = castream.attach_stream(stats.declare(model), probe_size=16)
    for fn in (metrics.insertion, metrics.deletion):
        torch.testing.assert_close(fn(stream, x, maps, None), fn(stream, x, maps, None, preprocess=stats))
    assert saliency.ScoreCAM(stream).preprocess is stats


def test_a_flat_folder_is_explained_at_the_predicted_class(tmp_path):
    spec = factory(tmp_path, NAMES)
    root = photo_folder(tmp_path / "flat", ["sub"])  # images in a sub-folder are found too
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "top.png")
    with pytest.raises(ValueError, match="has no labels"):
        evaluate(tmp_path, spec, f"images:{root}")
    runner = evaluate(tmp_path, spec, f"images:{root}", targets="predicted")
    assert len(runner.dataset) == 3 and not runner.labelled
    results = runner.run()
    assert results["models"][0]["accuracy"]["value"] is None


def test_a_csv_of_paths_labels_and_boxes(tmp_path):
    root = photo_folder(tmp_path / "photos", ["a", "b"])
    (tmp_path / "list.csv").write_text(
        f"path,label,boxes\nphotos/a/0.png,class3,1 2 10 12\n{root / 'b' / '0.png'},class1,0 0 5 5;4 4 9 9\n"
    )
    from castream.data.registry import open_dataset

    data = open_dataset(f"csv:{tmp_path / 'list.csv'}")
    assert data.classes == ["class1", "class3"] and [s.label for s in data.samples] == [1, 0]
    assert data.samples[1].boxes.shape == (2, 4) and data.samples[0].boxes.tolist() == [[1, 2, 10, 12]]
    runner = evaluate(tmp_path, factory(tmp_path, NAMES), f"csv:{tmp_path / 'list.csv'}")
    assert runner.labels_map.tolist() == [1, 3]
    (tmp_path / "ints.csv").write_text("path,label\nphotos/a/0.png,4\nphotos/a/1.png,9\n")
    assert open_dataset(f"csv:{tmp_path / 'ints.csv'}").classes == [str(i) for i in range(10)]
    (tmp_path / "bad.csv").write_text("file,class\nphotos/a/0.png,4\n")
    with pytest.raises(ValueError, match="header must name the columns path,label"):
        open_dataset(f"csv:{tmp_path / 'bad.csv'}")
    (tmp_path / "bad.csv").write_text("path,label,boxes\nphotos/a/0.png,4,1 2 3\n")
    with pytest.raises(ValueError, match="line 2: boxes must be"):
        open_dataset(f"csv:{tmp_path / 'bad.csv'}")


def test_training_takes_image_label_datasets(tmp_path):
    import torchvision

    from castream.train import TrainConfig, train_stream

    root = photo_folder(tmp_path / "photos", ["a", "b", "c"], per_class=4)
    transform = torchvision.transforms.ToTensor()
    data = torchvision.datasets.ImageFolder(str(root), transform=transform)
    model = castream.attach_stream(castream.models.resnet10_os16(num_classes=3), probe_size=32)
    config = TrainConfig(epochs=1, batch_size=4, workers=0)
    train_stream(model, data, data, tmp_path / "run", config, progress=False)
    assert (tmp_path / "run" / "stream.safetensors").is_file()


def test_explain_a_folder_in_batches_as_json(tmp_path, capsys):
    from castream.cli import main

    root = photo_folder(tmp_path / "photos", ["a", "b"], size=48)
    args = ["explain", str(root), "--model", factory(tmp_path, NAMES), "--size", "32", "--mean", "0.5"]
    args += ["0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--batch-size", "3", "--out", str(tmp_path / "o")]
    assert main([*args, "--json", "--layer", "layer3"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in records] == [str(root / c / f"{k}.png") for c in "ab" for k in range(2)]
    assert records[0]["explained"]["name"] in NAMES and len(records[0]["top"]) == 5
    first = np.load(tmp_path / "o" / "a_0_gradcam.npy")
    assert first.shape == (32, 32) and Image.open(tmp_path / "o" / "a_0_gradcam.png").size[0] > 300
    assert (tmp_path / "o" / "a_0_gradcam.png").stat().st_mode & 0o777 == 0o666 & ~_umask()
    # the layer option reached the method: layer3's map is not the default layer4's
    assert main([*args[:-1], str(tmp_path / "p"), "--json"]) == 0
    capsys.readouterr()
    assert not np.allclose(np.load(tmp_path / "p" / "a_0_gradcam.npy"), first)


def _umask():
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_cli_help_and_viz_import_leave_torch_and_the_backend_alone():
    """``castream --help`` answers without importing torch; importing castream.viz keeps the user's
    matplotlib backend (it used to force Agg, so that plt.show() showed nothing in Jupyter)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, contextlib, castream.cli as c\n"
        "with contextlib.suppress(SystemExit): c.main(['--help'])\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "import matplotlib, castream.viz; print('backend', matplotlib.get_backend())"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert "evaluate" in run.stdout and "backend svg" in run.stdout


def test_viz_returns_figures_and_images():
    from matplotlib.figure import Figure

    from castream import viz

    images, maps = torch.rand(2, 3, 24, 24), torch.rand(2, 24, 24)
    fig = viz.figure(
        images, {"Grad-CAM": maps, "Score-CAM": maps.flip(1)}, names=["cat", "dog"], probabilities=[0.9, 0.1]
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 3 + 1  # and the colour bar
    assert fig._repr_png_().startswith(b"\x89PNG")  # a notebook shows it as a cell's value, without pyplot
    assert [ax.get_title() for ax in fig.axes[:3]] == ["cat (p = 0.90)", "Grad-CAM", "Score-CAM"]
    picture = viz.overlay_image(images[0], maps[0], name="cat", probability=0.5)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB"
    photo = Image.fromarray(np.zeros((40, 60, 3), np.uint8))
    assert viz.overlay_image(photo, maps[0], region=(10, 0, 50, 40)).size == picture.size


@pytest.mark.parametrize(
    "name, options, total",
    [
        ("scorecam", {}, 2 * 16),  # one masked forward per (image, channel): 16 channels
        ("ablationcam", {}, None),  # the (image, channel) pairs whose map is not all zero
        ("sacam", {}, 2 * 16 * 2),  # a segmented and a perturbed input per pair
        ("opticam", {"max_iter": 3, "tol": 0.0}, 3),
        ("extremalperturbation", {"max_iter": 4, "areas": 0.1}, 4),
    ],
)
def test_slow_methods_show_progress_and_give_the_same_maps(name, options, total, monkeypatch):
    import tqdm

    bars = []

    class Recorder(tqdm.tqdm):
        def close(self):
            if not self.disable:
                bars.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Recorder)
    model = TinyNet().eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cls = saliency.get(name)
    plain = cls(model, **options)(images, [0, 1])
    shown = cls(model, progress=True, **options)(images, [0, 1])
    if total is None:
        total = int(model.features(images).flatten(2).ne(0).any(-1).sum())
    assert bars == [(cls.__name__, total, total)]
    torch.testing.assert_close(shown, plain, rtol=0, atol=0)
    with pytest.raises(TypeError, match="progress must be True or False"):
        cls(model, progress="yes", **options)
