"""Metrics against closed-form references on a toy model whose probabilities are known functions."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from castream import Preprocess, metrics, saliency

from _models import TinyNet

RAW = Preprocess(mean=(0, 0, 0), std=(1, 1, 1))  # pixels are the model input: black = 0


class Toy(nn.Module):
    """logit_0 = 6 * mean(left half), logit_1 = 6 * mean(right half), logit_2 = 1."""

    def forward(self, x):
        w = x.shape[-1] // 2
        left, right = x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))
        return torch.stack([6 * left, 6 * right, torch.ones_like(left)], 1)


def toy_probability(x, c):
    """The same function written out for one image (C, H, W)."""
    w = x.shape[-1] // 2
    logits = torch.tensor([6 * x[..., :w].mean(), 6 * x[..., w:].mean(), 1.0], dtype=torch.float64)
    return float(torch.softmax(logits, 0)[c])


def ordered_map(h=8, w=8, seed=0):
    """A map with distinct values, so the saliency order is unambiguous."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(h * w, generator=g).view(h, w).double() / (h * w - 1)


def images(n=3, h=8, w=8):
    return torch.rand(n, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_recognition_matches_hand_computation():
    x = images()
    maps = torch.stack([ordered_map(seed=i) for i in range(3)])
    t = torch.tensor([0, 1, 2])
    out = metrics.recognition(Toy(), x, maps, t, preprocess=RAW)
    for i in range(3):
        p = toy_probability(x[i], t[i])
        o = toy_probability(x[i] * maps[i], t[i])
        assert out["p"][i].item() == pytest.approx(p, rel=1e-6)
        assert out["o"][i].item() == pytest.approx(o, rel=1e-6)
        assert out["drop"][i].item() == pytest.approx(max(p - o, 0) / p, abs=1e-6)
        assert out["gain"][i].item() == pytest.approx(max(o - p, 0) / (1 - p), abs=1e-6)
        assert out["increase"][i].item() == float(o > p)


def test_box_study_matches_hand_computation():
    x = images()
    maps = torch.stack([ordered_map(seed=i) for i in range(3)])
    t = torch.tensor([0, 1, 0])
    boxes = [torch.tensor([[0.0, 0, 4, 8]]), torch.tensor([[2.0, 1, 7, 5], [0, 0, 1, 1]]), torch.zeros(0, 4)]
    out = metrics.box_study(Toy(), x, maps, boxes, t, preprocess=RAW)
    for i in range(2):
        inside = torch.zeros(8, 8, dtype=torch.float64)
        for x0, y0, x1, y1 in boxes[i].int().tolist():
            inside[y0:y1, x0:x1] = 1
        p = toy_probability(x[i], t[i])
        pseudo = {"box": inside, "complement": 1 - inside, "inside": maps[i] * inside}
        pseudo["outside"] = maps[i] * (1 - inside)
        for region, m in pseudo.items():
            o = toy_probability(x[i] * m, t[i])
            assert out[f"drop_{region}"][i].item() == pytest.approx(max(p - o, 0) / p, abs=1e-6)
            assert out[f"gain_{region}"][i].item() == pytest.approx(max(o - p, 0) / (1 - p), abs=1e-6)
            assert out[f"increase_{region}"][i].item() == float(o > p)
    assert all(v[2].isnan() for v in out.values())  # no boxes: not scored
    with pytest.raises(ValueError):
        metrics.box_study(Toy(), x, maps, boxes[:2], t, preprocess=RAW)


def test_sigmoid_scores_match_hand_computation():
    x = images()
    maps = torch.stack([ordered_map(seed=i) for i in range(3)])
    t = torch.tensor([0, 1, 2])
    out = metrics.recognition(Toy(), x, maps, t, preprocess=RAW, scores="sigmoid")
    for i in range(3):
        assert out["p"][i].item() == pytest.approx(
            torch.sigmoid(Toy()(x[i : i + 1])[0, t[i]]).item(), rel=1e-6
        )
        masked = Toy()((x[i] * maps[i])[None])[0, t[i]]
        assert out["o"][i].item() == pytest.approx(torch.sigmoid(masked).item(), rel=1e-6)
    auc = metrics.deletion(Toy(), x, maps, t, preprocess=RAW, step=16, scores="sigmoid")
    soft = metrics.deletion(Toy(), x, maps, t, preprocess=RAW, step=16)
    assert not torch.allclose(auc, soft)
    assert auc[2].item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())  # logit 2 is constant
    with pytest.raises(ValueError, match="scores must be one of"):
        metrics.recognition(Toy(), x, maps, t, preprocess=RAW, scores="logits")


def test_adversarial_verification_random_placement_moves_the_key_area_into_the_host():
    """``placement="random"``: the key area's pixels land, in the same arrangement, at a seeded position
    inside the host; everything else is the host's. An empty key area leaves the host."""
    x = torch.rand(2, 3, 8, 8)
    maps = torch.zeros(2, 8, 8)
    maps[0, 1:3, 2:5] = 1.0  # a 2 x 3 key area
    hosts = torch.rand(2, 4, 3, 8, 8)
    composites = metrics.robustness._embed(maps > 0.5, x, hosts, seed=3)
    assert torch.equal(composites[1], hosts[1])
    positions = set()
    for j in range(4):
        changed = (composites[0, j] != hosts[0, j]).any(0).nonzero()
        top, left = changed.min(0).values.tolist()
        assert changed.shape[0] == 6 and changed.max(0).values.tolist() == [top + 1, left + 2]
        assert torch.equal(composites[0, j, :, top : top + 2, left : left + 3], x[0, :, 1:3, 2:5])
        positions.add((top, left))
    assert len(positions) > 1
    assert torch.equal(composites, metrics.robustness._embed(maps > 0.5, x, hosts, seed=3))
    out = metrics.adversarial_verification(Toy(), x, maps, hosts, torch.tensor([0, 1]), placement="random")
    assert out["cases"].shape == (2, 4)
    with pytest.raises(ValueError, match="placement must be one of"):
        metrics.adversarial_verification(Toy(), x, maps, hosts, torch.tensor([0, 1]), placement="centre")


def test_adversarial_verification_matches_hand_computation():
    x = images(4)
    maps = torch.stack([ordered_map(seed=i) for i in range(4)])
    hosts = torch.rand(4, 3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    hosts[:, 0, :, :, 4:] = 0  # host 0 shows nothing on the right: class 1 wins there only with its key area
    t = Toy()(x).argmax(1)
    t[3] = (t[3] + 1) % 3  # one image whose clean prediction is not the target
    out = metrics.adversarial_verification(Toy(), x, maps, hosts, t, threshold=0.4)
    assert 0 < out["cases"].mean() < 1 and out["clean"].tolist() == [1, 1, 1, 0]
    for i in range(4):
        key = (maps[i] > 0.4).double()
        hits = []
        for j in range(3):
            composite = key * x[i] + (1 - key) * hosts[i, j]
            probs = [toy_probability(composite, c) for c in range(3)]
            hits.append(float(max(range(3), key=probs.__getitem__) == t[i]))
        assert out["cases"][i].tolist() == hits
        assert out["accuracy"][i].item() == pytest.approx(sum(hits) / 3)
        clean = [toy_probability(x[i], c) for c in range(3)]
        assert out["clean"][i].item() == float(max(range(3), key=clean.__getitem__) == t[i])
        assert out["area"][i].item() == pytest.approx(key.mean().item())
    # a key area covering the whole image keeps every composite equal to the image: no fading
    full = metrics.adversarial_verification(Toy(), x, torch.ones_like(maps), hosts, t)
    assert torch.equal(full["accuracy"], full["clean"])
    rows = torch.stack([out["accuracy"], out["clean"]], 1)
    expected = 1 - out["accuracy"].mean().item() / out["clean"].mean().item()
    assert metrics.fading_rate(rows) == pytest.approx(expected)
    assert metrics.fading_rate(torch.tensor([[0.184, 0.7528]])) == pytest.approx(
        0.7556, abs=1e-4
    )  # SA-CAM Tables 4-5
    assert math.isnan(metrics.fading_rate(torch.tensor([[0.0, 0.0]])))
    for bad, match in (
        (hosts[:3], r"\(B, J, C, H, W\) tensor with B = 4"),
        (hosts[:, :0], "at least one host"),
        (hosts[..., :4], "at least one host"),
    ):
        with pytest.raises(ValueError, match=match):
            metrics.adversarial_verification(Toy(), x, maps, bad, t)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\)"):
        metrics.adversarial_verification(Toy(), x, maps, hosts, t, threshold=1.0)


def test_drop_gain_at_the_limits_have_no_nan():
    p = torch.tensor([1.0, 0.0, 0.5, 1.0])
    o = torch.tensor([1.0, 0.3, 0.5, 0.2])
    r = metrics.drop_gain_increase(p, o)
    assert not any(v.isnan().any() for v in r.values())
    assert r["gain"][[0, 2, 3]].tolist() == [0.0, 0.0, 0.0] and r["gain"][1].item() == pytest.approx(0.3)
    assert r["drop"][3].item() == pytest.approx(0.8) and r["drop"][1] == 0
    assert r["increase"].tolist() == [0.0, 1.0, 0.0, 0.0]  # strict


def hand_curve(x, m, c, kind, step, baseline, reverse=False):
    """Algorithms 1-2 by hand: one image, pixel by pixel in decreasing saliency (ties: lower index
    first, or higher first with ``reverse``)."""
    h, w = m.shape
    sign = -1 if reverse else 1
    order = sorted(range(h * w), key=lambda j: (-float(m.flatten()[j]), sign * j))
    current = (baseline.clone() if kind == "insertion" else x.clone()).view(3, -1)
    source = (x if kind == "insertion" else baseline).reshape(3, -1)
    probs, fractions, done = [toy_probability(current.view(3, h, w), c)], [0.0], 0
    while done < h * w:
        for j in order[done : done + step]:
            current[:, j] = source[:, j]
        done = min(done + step, h * w)
        probs.append(toy_probability(current.view(3, h, w), c))
        fractions.append(done / (h * w))
    return sum(
        (probs[k] + probs[k + 1]) / 2 * (fractions[k + 1] - fractions[k]) for k in range(len(probs) - 1)
    )


@pytest.mark.parametrize("kind", ["insertion", "deletion"])
@pytest.mark.parametrize("step", [None, 5])
def test_causal_auc_matches_hand_computation(kind, step):
    x = images()
    maps = torch.stack([ordered_map(seed=i) for i in range(3)])
    maps[1, :4] = 0.5  # ties, broken by a stable sort
    t = torch.tensor([0, 1, 0])
    fn = getattr(metrics, kind)
    auc, curves = fn(
        Toy(), x, maps, t, preprocess=RAW, step=step, baseline="black", batch_size=7, return_curves=True
    )
    pixel_step = step or math.ceil(64 / 224)
    for i in range(3):
        expected = hand_curve(
            x[i], maps[i], t[i], kind, pixel_step, torch.zeros(3, 8, 8, dtype=torch.float64)
        )
        assert auc[i].item() == pytest.approx(expected, rel=1e-6)
    assert curves.protocol == "thesis" and curves.fractions[0] == 0 and curves.fractions[-1] == 1
    assert curves.probabilities.shape == (3, len(curves.fractions))


def test_insertion_default_starts_from_blur_and_authors_preset():
    x = torch.rand(2, 3, 32, 32)
    maps = torch.rand(2, 32, 32)
    t = torch.tensor([0, 1])
    _, curves = metrics.insertion(Toy(), x, maps, t, preprocess=RAW, return_curves=True)
    blurred = torchvision.transforms.functional.gaussian_blur(x, [11, 11], [5.0, 5.0])
    torch.testing.assert_close(curves.probabilities[:, 0], torch.softmax(Toy()(blurred), 1)[[0, 1], t])
    assert len(curves.fractions) == 1 + math.ceil(1024 / math.ceil(1024 / 224))
    _, authors = metrics.deletion(
        Toy(), x, maps, t, preprocess=RAW, protocol="authors-code", return_curves=True
    )
    assert authors.protocol == "authors-code" and len(authors.fractions) == 1 + 1024 // (8 * 32)
    assert (
        metrics.step_counts(224, 224).tolist()[:3] == [0, 224, 448]
        and len(metrics.step_counts(224, 224)) == 225
    )
    assert metrics.step_counts(224, 224, "authors-code")[1] == 1792


def test_authors_code_reverses_ties_and_pads_the_blur_with_zeros():
    x = images()
    maps = torch.stack([ordered_map(seed=i) for i in range(3)])
    maps[:, :3] = 0.5  # a block of ties
    t = torch.tensor([0, 1, 0])
    auc = metrics.deletion(
        Toy(), x, maps, t, preprocess=RAW, protocol="authors-code", baseline="black", step=5
    )
    for i in range(3):
        zeros = torch.zeros(3, 8, 8, dtype=torch.float64)
        expected = hand_curve(x[i], maps[i], t[i], "deletion", 5, zeros, reverse=True)
        assert auc[i].item() == pytest.approx(expected, rel=1e-6)
        assert expected != pytest.approx(hand_curve(x[i], maps[i], t[i], "deletion", 5, zeros), rel=1e-6)
    # zero padding in normalized space: out[c,i,j] = sum_uv k_u k_v x[c,i+u-2,j+v-2], 0 outside
    norm = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    z = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    line = torch.exp(-((torch.arange(5, dtype=torch.float64) - 2) ** 2) / 50)
    line /= line.sum()
    expected = torch.zeros_like(z)
    for i in range(6):
        for j in range(7):
            for u in range(5):
                for v in range(5):
                    if 0 <= i + u - 2 < 6 and 0 <= j + v - 2 < 7:
                        expected[0, :, i, j] += line[u] * line[v] * z[0, :, i + u - 2, j + v - 2]
    got = norm.baseline(z, "blur", kernel_size=5, sigma=5.0, padding="zeros")
    torch.testing.assert_close(got, expected)
    interior = torchvision.transforms.functional.gaussian_blur(z, [5, 5], [5.0, 5.0])[..., 2:-2, 2:-2]
    torch.testing.assert_close(got[..., 2:-2, 2:-2], interior)
    with pytest.raises(ValueError, match="odd kernel_size"):
        norm.baseline(z, "blur", kernel_size=4, padding="zeros")
    with pytest.raises(ValueError, match="ties must be one of"):
        metrics.saliency_rank(maps, "random")


def _authors_causal(model, image, explanation, target, mode, step, substrate_fn):
    """A transcription of the authors' (and RISE's) ``CausalMetric.single_run`` and ``auc``: numpy's
    flip(argsort) order, ``step`` pixels per step, the softmax score of ``target``, and
    ``auc = (sum - first/2 - last/2) / n_steps``."""
    import numpy as np

    hw = image.shape[-1] * image.shape[-2]
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = image.clone(), substrate_fn(image)
    else:
        start, finish = substrate_fn(image), image.clone()
    order = np.flip(np.argsort(explanation.reshape(-1, hw).numpy(), axis=1), axis=-1)
    scores = np.empty(n_steps + 1)
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores[i] = torch.softmax(model(start), 1)[0, target].item()
        if i < n_steps:
            coords = order[:, step * i : step * (i + 1)]
            start.numpy().reshape(1, 3, hw)[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
    return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)


def test_authors_code_preset_equals_the_released_causal_metric():
    """``protocol="authors-code"`` equals the authors' CausalMetric with their ``gkern(5, 5)`` blur
    (``conv2d(x, kern, padding=2)``: a 5 x 5 box filter, zero padding), ``torch.zeros_like`` deletion and
    ``8 * imsize`` pixels per step, at sizes whose step divides H*W (elsewhere their AUC spaces the last,
    shorter step like the others). Maps without ties: numpy's unstable argsort orders ties arbitrarily."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    def gkern(klen, nsig):
        inp = np.zeros((klen, klen))
        inp[klen // 2, klen // 2] = 1
        k = gaussian_filter(inp, nsig)
        kern = np.zeros((3, 3, klen, klen), "float32")
        kern[0, 0], kern[1, 1], kern[2, 2] = k, k, k
        return torch.from_numpy(kern)

    kern = gkern(5, 5)
    blur = lambda x: F.conv2d(x, kern, padding=5 // 2)  # noqa: E731 (as the released code)
    torch.manual_seed(0)
    model = TinyNet(classes=4).eval()
    for size in (32, 40):
        x, maps = torch.randn(2, 3, size, size), torch.rand(2, size, size)
        t = torch.tensor([1, 3])
        options = dict(preprocess=Preprocess(), protocol="authors-code")
        ins = metrics.insertion(model, x, maps, t, **options)
        dele = metrics.deletion(model, x, maps, t, **options)
        for i in range(2):
            args = (model, x[i : i + 1], maps[i], t[i].item())
            assert ins[i].item() == pytest.approx(_authors_causal(*args, "ins", 8 * size, blur), abs=1e-5)
            expected = _authors_causal(*args, "del", 8 * size, torch.zeros_like)
            assert dele[i].item() == pytest.approx(expected, abs=1e-5)
    assert metrics.protocol_step(64, 64, "authors-code") == 512 and metrics.protocol_step(64, 64) == 19
    # the thesis preset with RISE's gkern(11, 5) instead of the truncated Gaussian (blur="rise")
    x, maps, t = torch.randn(1, 3, 24, 24), torch.rand(1, 24, 24), torch.tensor([2])
    _, curves = metrics.insertion(model, x, maps, t, preprocess=Preprocess(), blur="rise", return_curves=True)
    reference = F.conv2d(F.pad(x, (5, 5, 5, 5), mode="reflect"), gkern(11, 5))
    assert curves.probabilities[0, 0].item() == pytest.approx(torch.softmax(model(reference), 1)[0, 2].item())
    with pytest.raises(ValueError, match="blur kernel must be one of"):
        metrics.insertion(model, x, maps, t, blur="box")


def test_evidence_map_beats_random_map():
    x = torch.rand(4, 3, 16, 16)
    t = torch.zeros(4, dtype=torch.long)  # class 0: evidence is the left half
    evidence = torch.zeros(4, 16, 16)
    evidence[..., :8] = 1
    random = torch.rand(4, 16, 16)
    ins = [metrics.insertion(Toy(), x, m, t, preprocess=RAW, baseline="black") for m in (evidence, random)]
    dele = [metrics.deletion(Toy(), x, m, t, preprocess=RAW) for m in (evidence, random)]
    assert (ins[0] > ins[1]).all() and (dele[0] < dele[1]).all()


def test_fakecam_near_zero_ad_and_ag_and_all_ones_map_exactly_zero():
    model = Preprocess().declare(torchvision.models.resnet18(num_classes=10).eval())
    x = torch.randn(4, 3, 64, 64)
    fake = saliency.FakeCAM(model)(x)
    r = metrics.recognition(model, x, fake)
    assert r["drop"].mean() < 0.01 and r["gain"].mean() < 0.01
    ones = metrics.recognition(model, x, torch.ones(4, 64, 64))
    assert ones["drop"].abs().max() == 0 and ones["gain"].abs().max() == 0 and ones["increase"].sum() == 0


def test_aopc_matches_hand_computation():
    x = images(2)
    maps = torch.zeros(2, 8, 8, dtype=torch.float64)
    maps[0, :4, :4] = 1.0  # most relevant patch: top-left, then bottom-left
    maps[0, 4:, :4] = 0.5
    maps[1, 4:, 4:] = 1.0
    maps[1, :4, 4:] = 0.3
    t = torch.tensor([0, 1])
    out = metrics.aopc(Toy(), x, maps, t, preprocess=RAW, patch_size=4, regions=2, baseline="black")
    patches = [[(0, 0), (4, 0)], [(4, 4), (0, 4)]]
    for i in range(2):
        p0 = toy_probability(x[i], t[i])
        z, drops = x[i].clone(), [0.0]
        for r, c in patches[i]:
            z[:, r : r + 4, c : c + 4] = 0
            drops.append(p0 - toy_probability(z, t[i]))
        assert out[i].item() == pytest.approx(sum(drops) / 3, abs=1e-6)


def test_aopc_quantus_convention_matches_hand_computation():
    # 10 x 10 image, patch 4: padded by (1, 1) to 12 x 12, a 3 x 3 grid whose cells start at -1, 3, 7
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    maps = torch.rand(2, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 1])
    out = metrics.aopc(
        Toy(), x, maps, t, preprocess=RAW, patch_size=4, regions=3, baseline="black", convention="quantus"
    )
    for i in range(2):
        cells = [(max(r, 0), r + 4, max(c, 0), c + 4) for r in (-1, 3, 7) for c in (-1, 3, 7)]
        sums = [float(maps[i, r0:r1, c0:c1].sum()) for r0, r1, c0, c1 in cells]
        order = sorted(range(9), key=lambda j: (-sums[j], j))
        p0, z, drops = toy_probability(x[i], t[i]), x[i].clone(), []
        for j in order[:3]:
            r0, r1, c0, c1 = cells[j]
            z[:, r0:r1, c0:c1] = x[i].min()  # Quantus' "black": the image's minimum input value
            drops.append(p0 - toy_probability(z, t[i]))
        assert out[i].item() == pytest.approx(sum(drops) / 3, abs=1e-6)
    noisy = metrics.aopc(Toy(), x, maps, t, preprocess=RAW, patch_size=4, regions=3, convention="quantus")
    again = metrics.aopc(Toy(), x, maps, t, preprocess=RAW, patch_size=4, regions=3, convention="quantus")
    torch.testing.assert_close(noisy, again)  # seeded
    with pytest.raises(ValueError, match="exceeds the 9 grid patches"):
        metrics.aopc(Toy(), x, maps, t, preprocess=RAW, patch_size=4, regions=10, convention="quantus")
    with pytest.raises(ValueError, match="quantus convention baselines"):
        metrics.aopc(
            Toy(), x, maps, t, preprocess=RAW, patch_size=4, regions=3, baseline="blur", convention="quantus"
        )
    with pytest.raises(ValueError, match="convention must be one of"):
        metrics.aopc(Toy(), x, maps, t, convention="samek")


def test_aopc_quantus_uniform_is_one_value_per_patch():
    captured = []

    class Spy(Toy):
        def forward(self, x):
            captured.append(x.clone())
            return super().forward(x)

    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    maps = ordered_map()[None]
    metrics.aopc(Spy(), x, maps, [0], preprocess=RAW, patch_size=4, regions=2, convention="quantus")
    last = torch.cat(captured)[-1]  # two patches replaced
    changed = (last != x[0]).any(0)
    assert changed.sum() == 32
    values = {round(float(v), 12) for v in last[:, changed].flatten()}
    assert len(values) == 2 and all(0 <= v < 1 for v in values)


def test_region_masks_are_non_overlapping_and_cumulative():
    maps = torch.rand(3, 20, 20)
    masks = metrics.region_masks(maps, patch_size=5, regions=6)
    assert masks.shape == (3, 7, 20, 20) and not masks[:, 0].any()
    added = masks[:, 1:].sum((2, 3)) - masks[:, :-1].sum((2, 3))
    assert ((added > 0) & (added <= 25)).all()  # each step adds one patch (clipped at the border)
    assert (masks[:, 1:] >= masks[:, :-1]).all()


def test_max_sensitivity_matches_naive_loop_and_is_zero_for_fakecam():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    method = saliency.GradCAM(model, "features")
    out = metrics.max_sensitivity(method, x, [1, 2], radius=0.2, samples=4, seed=3)
    reference = method(x, [1, 2])
    g = torch.Generator().manual_seed(3)
    worst = torch.zeros(2)
    for _ in range(4):
        noisy = x + 0.2 * (torch.rand(x.shape, generator=g) * 2 - 1)
        diff = (method(noisy, [1, 2]) - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
        worst = torch.maximum(worst, diff)
    torch.testing.assert_close(out, worst)
    assert metrics.max_sensitivity(saliency.FakeCAM(model), x, samples=2).abs().max() == 0


def test_adcc_formula_and_constant_maps():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    out = metrics.adcc(saliency.FakeCAM(model), model, x, [0, 1])
    # Fake-CAM: the same map for x and its masked copy (coherency 1), complexity 1 - 1/HW
    torch.testing.assert_close(out["coherency"], torch.ones(2))
    torch.testing.assert_close(out["complexity"], torch.full((2,), 1 - 1 / 256))
    expected = 3 / (1 / out["coherency"] + 1 / (1 - out["complexity"]) + 1 / (1 - out["drop"]))
    torch.testing.assert_close(out["adcc"], expected)
    dead = TinyNet(dead=tuple(range(16))).eval()  # constant (zero) maps everywhere: defined, no NaN
    constant = metrics.adcc(saliency.GradCAM(dead, "features"), dead, x, [0, 1])
    assert constant["coherency"].tolist() == [1.0, 1.0] and not constant["adcc"].isnan().any()
    assert metrics.pearson(torch.tensor([[1.0, 1, 1]]), torch.tensor([[1.0, 2, 3]])).item() == 0


def test_localization_on_hand_made_maps():
    maps = torch.zeros(4, 10, 10)
    maps[0, 2:5, 3:7] = 1  # exactly the box
    maps[1, 0:2, 0:2] = 1  # small blob outside the box ...
    maps[1, 6:10, 6:10] = 0.8  # ... and a larger one inside it: the largest component wins
    maps[2, 5, 5] = 1  # single peak inside the box
    boxes = [
        torch.tensor([[3.0, 2, 7, 5]]),
        torch.tensor([[6.0, 6, 10, 10]]),
        torch.tensor([[4.0, 4, 8, 8]]),
        torch.zeros(0, 4),
    ]
    targets = torch.tensor([1, 2, 3, 4])
    predictions = torch.tensor([1, 0, 3, 4])
    probs = torch.tensor([0.5, 0.25, 1.0, 0.9])
    out = metrics.localization(maps, boxes, targets, predictions, probs)
    assert (
        out["le"][0] == 0
        and out["om"][0] == 0
        and out["f1"][0] == 1
        and out["sp"][0] == 1
        and out["ep"][0] == 1
    )
    assert out["sm"][0].item() == pytest.approx(math.log(12 / 100) - math.log(0.5))
    assert out["le"][1] == 0 and out["om"][1] == 1  # right box, wrong prediction
    p = (16 * 0.8) / (4 + 16 * 0.8)
    r = 16 * 0.8 / 16
    assert out["ep"][1].item() == pytest.approx(p) and out["f1"][1].item() == pytest.approx(
        2 * p * r / (p + r)
    )
    assert out["sp"][1] == 0  # the maximum (1.0) is in the small blob
    assert out["sp"][2] == 1 and out["le"][2].item() == pytest.approx(1 - 1 / 16)
    assert out["sm"][2].item() == pytest.approx(math.log(0.05))  # a 1-pixel box: area clipped at 5%
    assert out["valid"].tolist() == [True, True, True, False] and out["le"][3].isnan()


class _Brightness(torch.nn.Module):
    """Stub classifier: logits (4 · mean of channel 0, 0), so p(class 0) = sigmoid(4 · mean)."""

    def forward(self, x):
        mean = x[:, 0].mean(dim=(1, 2))
        return torch.stack([4 * mean, torch.zeros_like(mean)], dim=1)


def test_sm_classifies_the_crop_of_the_predicted_box():
    # an object (channel 0 = 1) on the quarter of the image rows 2..6, cols 2..6 of an 8 x 8 image
    images = torch.zeros(3, 3, 8, 8)
    images[:, 0, 2:6, 2:6] = 1
    maps = torch.zeros(3, 8, 8)
    maps[0, 2:6, 2:6] = 1  # exactly the object
    maps[1] = 1  # constant (an all-ones map): no box, the whole image
    maps[2] = 1
    maps[2, 0, 0] = 0  # Fake-CAM: everything but the top-left pixel, whose box is the whole image
    boxes = [torch.tensor([[2.0, 2, 6, 6]])] * 3
    targets = torch.zeros(3, dtype=torch.long)
    p = metrics.sm_probabilities(_Brightness(), images, maps, targets)
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # the crop of the object, resized, is all ones (mean 1); the whole image has mean 1/4
    assert p.tolist() == pytest.approx([sigmoid(4), sigmoid(1), sigmoid(1)], abs=1e-6)
    out = metrics.localization(maps, boxes, targets, targets, p)
    assert out["sm"].tolist() == pytest.approx(
        [math.log(16 / 64) - math.log(sigmoid(4)), -math.log(sigmoid(1)), -math.log(sigmoid(1))], abs=1e-6
    )
    # the clean probability (the option): the same p for every map of an image
    clean = metrics.sm_probabilities(_Brightness(), images, maps, targets, probability="clean")
    assert clean.tolist() == pytest.approx([sigmoid(1)] * 3, abs=1e-6)
    with pytest.raises(ValueError, match="probability must be one of"):
        metrics.sm_probabilities(_Brightness(), images, maps, targets, probability="image")


def test_box_accuracy_by_hand():
    maps = torch.zeros(2, 10, 10)
    maps[0, 0:5, 0:5] = 0.9
    maps[1, 0:5, 0:10] = 0.4  # box (0, 0, 10, 5) for eta < 0.4, nothing above
    boxes = [torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([[0.0, 0, 5, 5]])]
    ious = metrics.threshold_ious(maps, boxes)
    assert ious[0, :90].eq(1).all() and ious[0, 90:].eq(0).all()
    assert ious[1, :40].eq(0.5).all() and ious[1, 40:].eq(0).all()
    # delta 0.3, 0.5: both images hit for eta < 0.4 -> 1.0; delta 0.7: only image 0 -> 0.5
    assert metrics.box_accuracy(maps, boxes) == pytest.approx((1 + 1 + 0.5) / 3)


def test_accuracy_and_map():
    logits = torch.tensor([[2.0, 1, 0], [0, 3, 1], [1, 0, 2]])
    assert metrics.accuracy(logits, torch.tensor([0, 2, 2])).tolist() == [1.0, 0.0, 1.0]
    assert metrics.accuracy(logits, torch.tensor([0, 2, 2]), k=2).tolist() == [1.0, 1.0, 1.0]
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
    labels = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])
    # class 0: ranks 1 (hit), 2, 3 (hit): precisions 1 and 2/3 -> AP 5/6; class 1: ranks 1, 2 (hit) -> 1/2
    ap = metrics.average_precision(scores, labels)
    torch.testing.assert_close(ap, torch.tensor([5 / 6, 1 / 2]))
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(2 / 3)


def test_sanity_check_randomizes_a_copy_head_first():
    model = TinyNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    out = metrics.sanity_check(lambda m: saliency.GradCAM(m, "features"), model, x)
    assert list(out) == ["fc", "features.3", "features.0"]
    assert all(-1 <= v <= 1 for v in out.values()) and out["features.0"] < 0.9
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    fake = metrics.sanity_check(lambda m: saliency.FakeCAM(m), model, x)
    assert all(v == pytest.approx(1.0) for v in fake.values())  # independent of the model: fails the test


def test_bad_maps_and_labels():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8\)"):
        metrics.recognition(Toy(), x, torch.rand(2, 4, 4), [0, 1], preprocess=RAW)
    with pytest.raises(ValueError, match=r"\[0, 1\]; pass normalize=True"):
        metrics.insertion(Toy(), x, torch.rand(2, 8, 8) * 3, [0, 1], preprocess=RAW)
    assert metrics.insertion(
        Toy(), x, torch.rand(2, 8, 8) * 3, [0, 1], preprocess=RAW, normalize=True
    ).shape == (2,)
    with pytest.raises(ValueError, match="NaN"):
        metrics.deletion(Toy(), x, torch.full((2, 8, 8), float("nan")), [0, 1], preprocess=RAW)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.recognition(Toy(), x, torch.rand(2, 8, 8), [0, 7], preprocess=RAW)
    with pytest.raises(ValueError, match="unknown protocol"):
        metrics.insertion(Toy(), x, torch.rand(2, 8, 8), [0, 1], protocol="paper")
    constant = metrics.deletion(Toy(), x, torch.zeros(2, 8, 8), [0, 1], preprocess=RAW)  # order by index
    assert not constant.isnan().any()


# --- aggregation -------------------------------------------------------------------------------------


def test_aggregator_mean_ci_and_nan_skipping():
    g = torch.Generator().manual_seed(0)
    small, large = metrics.Aggregator(), metrics.Aggregator()
    values = torch.rand(2000, generator=g)
    small.update("ad", values[:50])
    large.update("ad", values)
    mean, low, high = small.compute()["ad"]
    assert low <= mean <= high and mean == pytest.approx(float(values[:50].mean()))
    _, low_l, high_l = large.compute()["ad"]
    assert high_l - low_l < high - low
    agg = metrics.Aggregator()
    agg.update("le", torch.tensor([0.5, float("nan"), 0.25]))
    summary = agg.summary()["le"]
    assert summary["n"] == 2 and summary["skipped"] == 1 and summary["mean"] == pytest.approx(0.375)


def test_aggregator_order_independent_and_boxacc_reducer():
    values = torch.rand(10)
    a, b = metrics.Aggregator(), metrics.Aggregator()
    a.update("x", values)
    b.update("x", values[5:], torch.arange(5, 10))
    b.update("x", values[:5], torch.arange(5))
    assert a.compute() == b.compute()
    ious = torch.rand(6, 100)
    c = metrics.Aggregator()
    c.update("boxacc", ious)
    assert c.compute()["boxacc"][0] == pytest.approx(metrics.box_accuracy_from_ious(ious))
    with pytest.raises(ValueError, match="same image index twice"):
        b.update("x", values[:1], torch.tensor([0]))
        b.compute()
    record = a.record(method="gradcam", protocol="thesis")
    assert record["protocol"] == "thesis" and record["images"] == 10 and "torch" in record["versions"]


def _merge_worker(rank: int, world: int, init: str, values: torch.Tensor, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    agg = metrics.Aggregator()
    shard = torch.arange(rank, len(values), world)  # interleaved shards, like a DistributedSampler
    agg.update("ad", values[shard], shard)
    agg.merge()
    if rank == 0:
        queue.put(agg.compute())
    dist.destroy_process_group()


def test_two_process_merge_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    values = torch.rand(37, generator=torch.Generator().manual_seed(5)).double()
    single = metrics.Aggregator()
    single.update("ad", values)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_merge_worker, args=(r, 2, init, values, queue)) for r in range(2)]
    for p in procs:
        p.start()
    merged = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    assert merged == single.compute()


def test_blur_baseline_helper():
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(
        RAW.baseline(x, "blur", kernel_size=5, sigma=5.0),
        torchvision.transforms.functional.gaussian_blur(x, [5, 5], [5.0, 5.0]),
    )
    assert F.mse_loss(RAW.baseline(x, "black"), torch.zeros_like(x)) == 0


# --- class discrimination, pointing-game ties, paired bootstrap --------------------------------------


def _two_classes() -> torch.Tensor:
    """A 4 x 4 class map: class 0 (value 1) in the top-left 2 x 2, class 2 (value 3) in the bottom-right."""
    classes = torch.zeros(4, 4, dtype=torch.long)
    classes[:2, :2] = 1
    classes[2:, 2:] = 3
    return classes


def test_class_discrimination_on_hand_made_maps():
    classes = _two_classes()
    on_target = (classes == 1).float()
    both = (classes > 0).float()
    wrong = 0.5 * (classes == 1).float() + (classes == 3).float()
    zero = torch.zeros(4, 4)
    small_other = on_target.clone()
    small_other[3, 3] = small_other[3, 2] = 1.0  # 2 of the other class's 4 pixels, all at the maximum
    maps = torch.stack([on_target, both, wrong, zero, small_other])
    out = metrics.class_discrimination(maps, classes.expand(5, 4, 4), torch.zeros(5, dtype=torch.long))
    expected = {
        "energy_target": [1.0, 0.5, 1 / 3, 0, 4 / 6],
        "energy_other": [0.0, 0.5, 2 / 3, 0, 2 / 6],
        # mean saliency per pixel: 1 vs 0; 1 vs 1; 0.5 vs 1; none (0.5); 1 vs 0.5
        "discrimination": [1.0, 0.5, 1 / 3, 0.5, 2 / 3],
        "sp_target": [1.0, 1, 0, 1, 1],  # the zero map ties everywhere (Quantus' rule)
        "sp_other": [0.0, 1, 1, 1, 1],
    }
    for key, values in expected.items():
        torch.testing.assert_close(out[key], torch.tensor(values), msg=key)
    # an image holding only its target class: the metrics that need another class are NaN
    alone = metrics.class_discrimination(on_target[None], (classes == 1).long()[None], 0)
    assert alone["energy_target"].item() == 1 and alone["sp_target"].item() == 1
    assert all(alone[k].isnan().all() for k in ("energy_other", "discrimination", "sp_other"))
    with pytest.raises(ValueError, match="class maps"):
        metrics.class_discrimination(maps, classes.float().expand(5, 4, 4), 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.class_discrimination(maps * 255, classes.expand(5, 4, 4), 0)


def test_pointing_game_ties_do_not_depend_on_orientation():
    # a plateau of two maximal pixels: (0, 0) outside the box, (0, 3) inside it
    m = torch.tensor([[1.0, 0.2, 0.2, 1.0], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    boxes = [torch.tensor([[3.0, 0.0, 4.0, 2.0]])]
    mirrored_boxes = [torch.tensor([[0.0, 0.0, 1.0, 2.0]])]
    common = (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.ones(1))
    sp = metrics.localization(m[None], boxes, *common)["sp"]
    sp_mirrored = metrics.localization(m.flip(-1)[None], mirrored_boxes, *common)["sp"]
    assert sp.item() == sp_mirrored.item() == 1.0
    # within the relative tolerance counts as a tie; clearly below does not
    region = torch.zeros(1, 4, 4, dtype=torch.bool)
    region[0, 3, 3] = True
    near = torch.zeros(1, 4, 4)
    near[0, 0, 0], near[0, 3, 3] = 1.0, 1.0 - 1e-8
    assert metrics.pointing_hits(near, region).item()
    near[0, 3, 3] = 0.99
    assert not metrics.pointing_hits(near, region).item()


def test_paired_bootstrap_against_exact_enumeration():
    import itertools

    diffs = torch.tensor([-1.0, 1.0, 2.0, 4.0])
    a = torch.tensor([10.0, 20.0, 30.0, 40.0])
    out = metrics.paired_bootstrap(a, a + diffs, resamples=20000, seed=1)
    # exact bootstrap distribution: all 4^4 resamples equally likely
    means = sorted(sum(diffs[list(idx)].tolist()) / 4 for idx in itertools.product(range(4), repeat=4))
    exact_low, exact_high = means[int(0.025 * 256)], means[int(0.975 * 256)]
    assert out["mean"] == pytest.approx(1.5) and out["n"] == 4
    assert abs(out["low"] - exact_low) <= 0.25 and abs(out["high"] - exact_high) <= 0.25
    # pairing: a constant shift is significant although the two samples overlap almost entirely
    shifted = metrics.paired_bootstrap(a, a + 1, seed=0)
    assert shifted["low"] == shifted["high"] == pytest.approx(1.0) and shifted["significant"]
    balanced = metrics.paired_bootstrap(a, a + torch.tensor([-1.0, 1.0, -1.0, 1.0]), seed=0)
    assert not balanced["significant"] and balanced["low"] < 0 < balanced["high"]
    nan = metrics.paired_bootstrap(torch.tensor([1.0, float("nan")]), torch.tensor([2.0, 5.0]))
    assert nan["n"] == 1 and nan["mean"] == 1.0
    with pytest.raises(ValueError, match="same images"):
        metrics.paired_bootstrap(torch.ones(3), torch.ones(4))


def test_random_map_is_seeded_per_image_and_independent_of_batching():
    model = TinyNet()
    images = torch.randn(4, 3, 16, 16)
    method = saliency.get("random")(model, grid=4, seed=3)
    maps = method(images)
    assert maps.shape == (4, 16, 16) and maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(method(images[2:3]), maps[2:3])  # alone or in a batch: the same map
    torch.testing.assert_close(method(images.flip(0)), maps.flip(0))
    assert not torch.allclose(maps[0], maps[1])
    assert method(images, upsample=False).shape == (4, 4, 4)
    assert not torch.allclose(saliency.get("random")(model, grid=4, seed=4)(images), maps)
    with pytest.raises(ValueError, match="grid"):
        saliency.get("random")(model, grid=0)


@pytest.mark.parametrize(
    "maps,boxes,error",
    [
        (torch.full((1, 4, 4), float("nan")), [torch.tensor([[0.0, 0, 2, 2]])], "NaN"),
        (torch.full((1, 4, 4), 255.0), [torch.tensor([[0.0, 0, 2, 2]])], r"\[0, 1\]"),
        (-torch.ones(1, 4, 4), [torch.tensor([[0.0, 0, 2, 2]])], r"\[0, 1\]"),
        (torch.rand(1, 4, 4), [torch.tensor([[0.0, 0, 2]])], r"shape \(n, 4\)"),
        (torch.rand(1, 4, 4), [torch.tensor([[2.0, 0, 1, 2]])], "x0 < x1"),
        (torch.rand(1, 4, 4), [torch.tensor([[0.0, float("inf"), 1, 2]])], "NaN or Inf"),
        (torch.rand(1, 4, 4), [torch.tensor([[5.0, 5, 9, 9]])], "entirely outside"),
        (torch.rand(2, 4, 4), [torch.tensor([[0.0, 0, 2, 2]])], "one box tensor per map"),
    ],
)
def test_localization_refuses_bad_maps_and_boxes(maps, boxes, error):
    n = len(maps)
    with pytest.raises(ValueError, match=error):
        metrics.localization(
            maps, boxes, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.ones(n)
        )
    with pytest.raises(ValueError, match=error):
        metrics.box_accuracy(maps, boxes)


def test_localization_checks_probabilities_and_clamps_boxes():
    maps, boxes = torch.rand(1, 4, 4), [torch.tensor([[-3.0, -3, 2, 2]])]
    zeros = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        metrics.localization(maps, boxes, zeros, zeros, torch.tensor([1.5]))
    clamped = metrics.localization(maps, [torch.tensor([[0.0, 0, 2, 2]])], zeros, zeros, torch.ones(1))
    out = metrics.localization(maps, boxes, zeros, zeros, torch.ones(1))
    assert all(torch.equal(out[k], clamped[k]) for k in clamped)


def test_counts_are_validated_not_defaulted():
    model, images = TinyNet(), torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 16, 16)
    with pytest.raises(ValueError, match="step must be an integer >= 1, got 0"):
        metrics.insertion(model, images, maps, step=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        metrics.deletion(model, images, maps, batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        metrics.recognition(model, images, maps, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        saliency.get("scorecam")(model, batch_size=2.5)


def test_sanity_check_skips_and_counts_constant_maps_and_averages_repeats():
    from castream.saliency.base import SaliencyMethod

    class Zero(SaliencyMethod):  # a method whose map is constant on every randomized model
        uses_layer = False

        def compute(self, images, targets):
            return torch.zeros(images.shape[0], *images.shape[-2:])

    model, x = TinyNet().eval(), torch.randn(3, 3, 16, 16)
    calls = []

    def factory(m):
        calls.append(m)
        return saliency.FakeCAM(m) if len(calls) == 1 else Zero(m)

    out = metrics.sanity_check(factory, model, x, details=True)
    assert all(math.isnan(e["rho"]) and e["constant"] == e["pairs"] == 3 for e in out.values())
    gradcam = lambda m: saliency.GradCAM(m, "features")  # noqa: E731
    one = metrics.sanity_check(gradcam, model, x, seed=5)
    two = metrics.sanity_check(gradcam, model, x, seed=5, repeats=2, details=True)
    for layer, entry in two.items():
        assert entry["per_repeat"][0] == pytest.approx(one[layer])  # repeat 0 is the single-repeat run
        kept = entry["pairs"] - entry["constant"]
        assert kept == 6 and entry["rho"] == pytest.approx(sum(entry["per_repeat"]) / 2)
    assert two["features.0"]["per_repeat"][0] != two["features.0"]["per_repeat"][1]  # other seeds
    assert metrics.sanity_check(gradcam, model, x, seed=5) == one  # explicit seeding: reproducible
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        metrics.sanity_check(gradcam, model, x, repeats=0)


def test_sanity_check_randomizes_whole_blocks():
    """A block or a stage named in ``layers`` is re-initialized entirely (before: only its own, usually
    absent, parameters, so ``layer4`` kept ``fc``'s value, i.e. nothing changed)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    images = torch.randn(2, 3, 64, 64)
    rho = metrics.sanity_check(
        lambda m: saliency.GradCAM(m, "layer3"), model, images, layers=["fc", "layer3"]
    )
    assert rho["layer3"] != rho["fc"] and rho["layer3"] < 0.9
    with pytest.raises(ValueError, match="no parameters"):
        metrics.sanity_check(lambda m: saliency.GradCAM(m), model, images, layers=["relu"])
    with pytest.raises(ValueError, match="not a module"):
        metrics.sanity_check(lambda m: saliency.GradCAM(m), model, images, layers=["layer9"])


def test_unit_interpretability_equals_a_hand_count():
    """Thesis eq. (1.15) / Network Dissection: the dataset-level IoU of each unit's top-quantile mask with
    each concept mask, against an explicit per-image loop."""
    torch.manual_seed(0)
    acts = torch.rand(5, 3, 4, 4)
    masks = torch.rand(5, 2, 8, 8) > 0.6
    got = metrics.unit_interpretability(acts, masks, top=0.1, batch_size=2)
    for k in range(3):
        values = acts[:, k].flatten().sort(descending=True).values
        threshold = values[round(0.1 * values.numel()) - 1]
        for c in range(2):
            inter = union = 0
            for n in range(5):
                up = F.interpolate(acts[n : n + 1, k : k + 1], size=(8, 8), mode="bilinear")[0, 0]
                m = up >= threshold
                inter += (m & masks[n, c]).sum().item()
                union += (m | masks[n, c]).sum().item()
            assert got[k, c].item() == pytest.approx(inter / union)
    empty = metrics.unit_interpretability(acts, torch.zeros(5, 1, 8, 8, dtype=torch.bool), top=0.1)
    assert empty.shape == (3, 1) and (empty == 0).all()  # a unit's mask is never empty: IoU 0, not NaN
    with pytest.raises(ValueError, match="top must be a fraction"):
        metrics.unit_interpretability(acts, masks, top=0)
    with pytest.raises(ValueError, match="masks must be"):
        metrics.unit_interpretability(acts, masks[:2])


def _quantus_05_region_perturbation(model, x, a, y, patch, regions, value):
    """A transcription of Quantus 0.5's ``RegionPerturbation.evaluate_instance`` (order "morf") with a
    constant ``perturb_baseline``: every top-left position of the zero-padded map scored by its patch sum,
    sorted descending, overlapping patches skipped, the kept ones replaced cumulatively; the result is the
    mean of ``p(x) - p(x^(k))`` over k = 1..L (the AOPC of the tutorial the thesis followed)."""
    import itertools

    import numpy as np

    def predict(arr):
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(arr)[None]), 1)[0, y].item()

    x, a = x.numpy(), a.numpy()
    pad = patch - 1
    a_pad = np.pad(a, ((0, 0), (pad, pad), (pad, pad)))
    sums, slices = [], []
    for i, j in itertools.product(range(pad, a_pad.shape[1] - pad), range(pad, a_pad.shape[2] - pad)):
        sums.append(a_pad[:, i : i + patch, j : j + patch].sum())
        slices.append((i, j))
    blocked = np.zeros(a_pad.shape[1:], dtype=bool)
    kept = []
    for k in np.argsort(sums, kind="stable")[::-1]:
        i, j = slices[k]
        if not blocked[i : i + patch, j : j + patch].any():
            kept.append((i, j))
            blocked[i : i + patch, j : j + patch] = True
        if len(kept) >= regions:
            break
    clean, perturbed, results = predict(x), x.copy(), []
    for i, j in kept:
        padded = np.pad(perturbed, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        padded[:, i : i + patch, j : j + patch] = value
        perturbed = padded[:, pad:-pad, pad:-pad]
        results.append(clean - predict(np.ascontiguousarray(perturbed)))
    return float(np.mean(results))


def test_aopc_quantus_05_convention_equals_quantus_05_and_relates_to_the_default():
    torch.manual_seed(0)
    model = TinyNet(classes=4).eval()
    x, maps, t = torch.randn(3, 3, 20, 20), torch.rand(3, 20, 20), torch.tensor([0, 2, 3])
    options = dict(patch_size=4, regions=5, baseline=torch.tensor(0.3))
    got = metrics.aopc(model, x, maps, t, convention="quantus-0.5", **options)
    for i in range(3):
        expected = _quantus_05_region_perturbation(model, x[i], maps[i : i + 1], t[i].item(), 4, 5, 0.3)
        assert got[i].item() == pytest.approx(expected, abs=1e-6)
    # castream's default replaces the same patches in pixel space and adds the k = 0 term: with the same
    # replacement (a pixel value) it is L/(L+1) of the Quantus 0.5 value
    raw = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pixel = torch.full((3, 1, 1), 0.3)
    default = metrics.aopc(model, x, maps, t, patch_size=4, regions=5, baseline=pixel, preprocess=raw)
    torch.testing.assert_close(default, got * 5 / 6, rtol=1e-5, atol=1e-7)
    uniform = metrics.aopc(model, x, maps, t, convention="quantus-0.5", patch_size=4, regions=5, seed=1)
    assert uniform.shape == (3,) and torch.isfinite(uniform).all()


def _naive_summary(values: dict, reducers: dict, seed: int = 0, resamples: int = 1000) -> dict:
    """The bootstrap written plainly: one (resamples, n) draw per reducer metric, and one for all the plain
    means (drawn where the first of them comes: they are resampled together), one call per resample."""
    generator, out, shared = torch.Generator().manual_seed(seed), {}, None
    for name, used in values.items():
        if name in reducers or shared is None:
            d = torch.randint(len(used), (resamples, len(used)), generator=generator)
            shared = d if name not in reducers else shared
        else:
            d = shared
        if name in reducers:
            boot = torch.tensor([reducers[name](used[row]) for row in d])
        else:
            boot = used[d].mean(dim=1)
        alpha = (1 - 0.95) / 2
        out[name] = torch.quantile(boot, torch.tensor([alpha, 1 - alpha], dtype=boot.dtype)).tolist()
    return out


@pytest.mark.parametrize("n, chunk", [(37, 1 << 22), (37, 100), (500, 1000), (3, 2)])
def test_chunked_vectorized_bootstrap_equals_the_per_resample_loop(n, chunk, monkeypatch):
    from castream.metrics import aggregate

    monkeypatch.setattr(aggregate, "CHUNK", chunk)  # several chunks, rows split across them
    g = torch.Generator().manual_seed(n)
    values = {
        "ad": torch.rand(n, generator=g, dtype=torch.float64),
        "boxacc": torch.rand(n, 100, generator=g, dtype=torch.float64),
        "ag": torch.rand(n, generator=g, dtype=torch.float64),
        "fading": torch.randint(0, 2, (n, 2), generator=g).double(),
    }
    agg = metrics.Aggregator(seed=3)
    for name, v in values.items():
        agg.update(name, v)
    got = agg.summary()
    reducers = {"boxacc": metrics.box_accuracy_from_ious, "fading": metrics.fading_rate}
    expected = _naive_summary(values, reducers, seed=3)
    got = {k: [got[k]["low"], got[k]["high"]] for k in values}
    for k in reducers:
        assert repr(got[k]) == repr(expected[k])  # bit for bit (repr: a NaN interval equals itself)
    for k in ("ad", "ag"):  # counts @ values / n, not the gathered mean: equal to rounding
        assert got[k] == pytest.approx(expected[k], rel=1e-13, abs=1e-15)
    a, b = values["ad"], values["boxacc"][:, 0]
    d = torch.randint(n, (1000, n), generator=torch.Generator().manual_seed(5))
    boot = (b - a)[d].mean(1)
    alpha = (1 - 0.95) / 2
    low, high = torch.quantile(boot, torch.tensor([alpha, 1 - alpha], dtype=boot.dtype)).tolist()
    out = metrics.paired_bootstrap(a, b, seed=5)
    assert (out["low"], out["high"]) == pytest.approx((low, high), rel=1e-13, abs=1e-15)


def test_fading_rate_reproduces_sa_cam_table_5_with_a_clean_accuracy_of_75_29():
    # SA-CAM Tables 4 (Acc_adv) and 5 (fading rate), cases 1-3 x Grad-CAM, Score-CAM, SA-CAM
    accuracy = [18.40, 22.31, 22.35, 21.59, 24.18, 29.26, 29.73, 28.11, 34.67]
    fading = [75.56, 70.37, 70.31, 71.32, 67.88, 61.14, 60.51, 62.66, 53.95]
    n = 10_000
    for acc, expected in zip(accuracy, fading):
        rows = torch.zeros(n, 2, dtype=torch.float64)
        rows[: round(acc / 100 * n), 0] = 1  # adversarial hits
        rows[: round(0.7529 * n), 1] = 1  # clean hits: 75.29%
        assert round(100 * metrics.fading_rate(rows), 2) == expected
    assert sum(round(100 * (1 - a / 75.28), 2) == f for a, f in zip(accuracy, fading)) == 7  # not 75.28


@pytest.mark.parametrize(
    "map_,etas",
    [
        (np.zeros((0, 5)), (0.5,)),
        (np.zeros((4, 0)), (0.1, 0.2)),
        (np.random.default_rng(0).random((9, 7)), ()),
        (np.random.default_rng(1).random((9, 7)), (0.9, 0.1, 0.5, 0.5)),
        (np.array([[np.nan, 1.0], [0.0, 1.0]]), (0.5,)),
        (np.array([[np.inf, 1.0], [0.0, 1.0]]), (0.5,)),
        (np.ones((3, 3)), (float("nan"),)),
        (np.ones((2, 3, 3)), (0.5,)),
        (np.array([[True, False], [True, True]]), (0.5,)),
        (np.full((3, 3), 2.0), (2.0, 1.999)),
    ],
)
def test_compiled_components_and_the_scipy_fallback_agree_on_every_input(map_, etas, monkeypatch):
    """Issue 32 item 13: both paths get the inputs the public entry checks, so they agree (or fail the
    same way) on empty maps, NaN and Inf, any dimension or dtype, unsorted and repeated thresholds."""
    import importlib

    localization = importlib.import_module("castream.metrics.localization")  # the module, not the function
    if localization._components is None:
        pytest.skip("the compiled helper is not built here")
    results = []
    for compiled in (localization._components, None):
        monkeypatch.setattr(localization, "_components", compiled)
        try:
            results.append(localization.threshold_boxes(map_, etas).tolist())
        except ValueError as err:
            results.append(("error", str(err)))
    assert results[0] == results[1]
