"""CUDA: every method and metric agrees with the CPU, streams train, the CLI runs end to end, and the bf16 /
channels_last paths hold. Skipped without a GPU; run ``PYTHONPATH=src python -m pytest -m cuda`` on one.

Tolerances. With TF32 off (as here), CUDA and the CPU compute the same float32 functions up to summation
order: the maps of the closed-form methods agree to 1e-3 (max abs, maps in [0, 1]). Opti-CAM and Extremal
Perturbation optimize: their normalized steps amplify rounding, so their maps are compared by cosine.
"""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import castream
from castream import metrics, saliency
from castream.cli import main

from _models import tiny_vit

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
ITERATIVE = ("opticam", "extremalperturbation")


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact float32 on the GPU, so that differences to the CPU are rounding, not TF32's 10-bit mantissa."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cpu = torchvision.models.resnet18(num_classes=10).eval()
    gpu = torchvision.models.resnet18(num_classes=10).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.to(CUDA)


def _options(name):
    if name == "extremalperturbation":
        return {"max_iter": 20, "step": 2, "sigma": 3, "max_blur": 3}
    return {"max_iter": 20} if name == "opticam" else {}


def _cosine(a, b):
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double()).min().item()


@pytest.mark.parametrize(
    "name",
    [n for n in saliency.available() if n not in ("rawattention", "rollout", "transformerattribution")],
)
def test_method_cuda_equals_cpu(models, name):
    cpu, gpu = models
    x = torch.randn(4, 3, 64, 64)
    reference = saliency.get(name)(cpu, **_options(name))(x, [0, 1, 2, 3])
    maps = saliency.get(name)(gpu, **_options(name))(x.to(CUDA), [0, 1, 2, 3])
    assert maps.device.type == "cuda" and maps.dtype == torch.float32
    if name in ITERATIVE:
        assert _cosine(maps.cpu(), reference) > 0.9
    else:
        torch.testing.assert_close(maps.cpu(), reference, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["transformerattribution", "rollout", "rawattention"])
def test_vit_method_cuda_equals_cpu(name):
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    torch.nn.init.normal_(vit.heads.head.weight)
    x = torch.randn(2, 3, 32, 32)
    reference = saliency.get(name)(vit)(x, [0, 3])
    maps = saliency.get(name)(vit.to(CUDA))(x.to(CUDA), [0, 3])
    torch.testing.assert_close(maps.cpu(), reference, atol=1e-3, rtol=0)


def test_metrics_cuda_equal_cpu(models):
    cpu, gpu = models
    x, maps, t = torch.randn(3, 3, 64, 64), torch.rand(3, 64, 64), torch.tensor([0, 1, 2])
    boxes = [torch.tensor([[4.0, 4, 40, 40]])] * 3
    g = (x.to(CUDA), maps.to(CUDA), t.to(CUDA))
    pairs = [
        (metrics.insertion(cpu, x, maps, t), metrics.insertion(gpu, *g)),
        (metrics.deletion(cpu, x, maps, t), metrics.deletion(gpu, *g)),
        (metrics.aopc(cpu, x, maps, t), metrics.aopc(gpu, *g)),
        (metrics.recognition(cpu, x, maps, t)["drop"], metrics.recognition(gpu, *g)["drop"]),
        (metrics.threshold_ious(maps, boxes), metrics.threshold_ious(g[1], boxes)),
    ]
    for a, b in pairs:
        torch.testing.assert_close(b.cpu().float(), a.float(), atol=1e-3, rtol=0, equal_nan=True)
    method = lambda m: saliency.GradCAM(m)  # noqa: E731
    torch.testing.assert_close(
        metrics.adcc(method(gpu), gpu, g[0], g[2])["adcc"].cpu(),
        metrics.adcc(method(cpu), cpu, x, t)["adcc"],
        atol=1e-3,
        rtol=0,
    )


def test_sanity_check_on_cuda_keeps_devices_and_cuda_rng(models):
    """Spearman's ranks come back on the model's device; re-initializing layers on the GPU leaves the
    caller's CUDA random state as found (before: a device mismatch error, and a changed CUDA RNG)."""
    _, gpu = models
    x = torch.randn(2, 3, 64, 64, device=CUDA)
    state = torch.cuda.get_rng_state()
    rho = metrics.sanity_check(lambda m: saliency.GradCAM(m), gpu, x, layers=["fc", "layer4"])
    assert set(rho) == {"fc", "layer4"}
    assert torch.equal(torch.cuda.get_rng_state(), state)


def test_bf16_and_channels_last_on_cuda(models):
    _, gpu = models
    fast = torchvision.models.resnet18(num_classes=10).eval()
    fast.load_state_dict(gpu.state_dict())
    fast.to(CUDA, memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64, device=CUDA)
    for name in ("gradcam", "scorecam", "opticam"):
        reference = saliency.get(name)(gpu, **_options(name))(x, [0, 1, 2, 3])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            method = saliency.get(name)(fast, **_options(name))
            maps = method(x.contiguous(memory_format=torch.channels_last), [0, 1, 2, 3])
        assert maps.dtype == torch.float32
        assert _cosine(maps, reference) > (0.8 if name == "opticam" else 0.98), name
        if name == "opticam":
            assert method.iterations.tolist() == [20] * 4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        auc = metrics.insertion(fast, x, torch.rand(4, 64, 64, device=CUDA), [0, 1, 2, 3])
    assert auc.dtype == torch.float32


def test_stream_forward_and_training_step_on_cuda():
    torch.manual_seed(0)
    model = castream.attach_stream(torchvision.models.resnet18(num_classes=10)).to(CUDA).train()
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.SGD(model.stream.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 64, 64, device=CUDA), torch.randint(0, 10, (4,), device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items())
    assert model.attention_map(-1).shape == (4, 64, 64)


def test_train_and_evaluate_cli_on_cuda(tmp_path):
    data = tmp_path / "data"
    assert (
        main(
            [
                "synth",
                "--out",
                str(data),
                "--classes",
                "3",
                "--train",
                "32",
                "--val",
                "16",
                "--size",
                "48",
                "--quiet",
            ]
        )
        == 0
    )
    common = ["--data", f"synthetic:{data}", "--size", "32", "--epochs", "1", "--batch-size", "16", "--quiet"]
    assert (
        main(
            [
                "train",
                "classifier",
                "--model",
                "resnet18",
                "--out",
                str(tmp_path / "clf"),
                "--amp",
                "bf16",
                *common,
            ]
        )
        == 0
    )
    args = [
        "evaluate", "--model", "resnet18", "--data", f"synthetic:{data}", "--size", "64", "--images", "8",
        "--checkpoint", str(tmp_path / "clf" / "model.safetensors"), "--methods", "gradcam",
        "--protocol", "coarse", "--quiet",
    ]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*args, "--out", str(tmp_path / "bf16"), "--amp", "bf16", "--channels-last"]) == 0
    import json

    fp32 = json.loads((tmp_path / "fp32" / "results.json").read_text())
    bf16 = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert fp32.keys() == bf16.keys()
