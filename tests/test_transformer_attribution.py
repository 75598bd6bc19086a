"""Transformer attribution (Chefer et al. 2021) against a per-image transcription of the authors' released
relevance propagation (autograd ``gradprop`` as in their ``layers_ours.py``), on a functional forward written
here from the parameters of a tiny torchvision ViT."""

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from castream import saliency

from _models import tiny_vit


def _sdiv(a, b):  # the authors' safe_divide
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def _leaves(*xs):
    return [x.detach().requires_grad_(True) for x in xs]


def _linear(x, w, r):  # layers_ours.Linear.relprop, alpha=1 (beta=0)
    px, nx = _leaves(x.clamp(min=0), x.clamp(max=0))
    z1, z2 = F.linear(px, w.clamp(min=0)), F.linear(nx, w.clamp(max=0))
    s = _sdiv(r, z1 + z2)
    return px * torch.autograd.grad(z1, px, s)[0] + nx * torch.autograd.grad(z2, nx, s)[0]


def _simple(fn, xs, r):  # RelPropSimple (einsum operands)
    xs = _leaves(*xs)
    z = fn(*xs)
    cs = torch.autograd.grad(z, xs, _sdiv(r, z))
    return [x * c for x, c in zip(xs, cs)]


def _add(xs, r):  # layers_ours.Add.relprop
    a, b = _simple(lambda u, v: u + v, xs, r)
    sa, sb = a.sum(), b.sum()
    fa = _sdiv(sa.abs(), sa.abs() + sb.abs()) * r.sum()
    fb = _sdiv(sb.abs(), sa.abs() + sb.abs()) * r.sum()
    return a * _sdiv(fa, a.sum()), b * _sdiv(fb, b.sum())


def _clone(x, rs):  # layers_ours.Clone.relprop
    (xl,) = _leaves(x)
    zs = [xl * 1 for _ in rs]
    c = torch.autograd.grad(zs, xl, [_sdiv(r, x) for r in rs])[0]
    return x * c


def _reference(vit: torchvision.models.VisionTransformer, image, target, start_layer=0):
    """One image: the functional forward (returns logits), then ViT_LRP.relprop + transformer_attribution."""
    heads = vit.encoder.layers[0].self_attention.num_heads
    x = vit.conv_proj(image[None]).flatten(2).transpose(1, 2)
    x = torch.cat([vit.class_token, x], 1) + vit.encoder.pos_embedding
    saved = []
    for layer in vit.encoder.layers:
        mha, mlp = layer.self_attention, layer.mlp
        h = F.layer_norm(x, (x.shape[-1],), layer.ln_1.weight, layer.ln_1.bias, layer.ln_1.eps)
        qkv = F.linear(h, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = (t.reshape(1, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in qkv.chunk(3, -1))
        attn = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) * (q.shape[-1] ** -0.5), -1)
        ctx = torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(1, -1, x.shape[-1])
        a = mha.out_proj(ctx)
        y = x + a
        h2 = F.layer_norm(y, (y.shape[-1],), layer.ln_2.weight, layer.ln_2.bias, layer.ln_2.eps)
        g = F.gelu(mlp[0](h2))
        m = mlp[3](g)
        saved.append(dict(x=x, h=h, q=q, k=k, v=v, attn=attn, ctx=ctx, a=a, y=y, h2=h2, g=g, m=m))
        x = y + m
    ln = vit.encoder.ln
    cls = F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)[:, 0]
    logits = vit.heads.head(cls)
    grads = torch.autograd.grad(logits[0, target], [s["attn"] for s in saved])

    r = _linear(cls, vit.heads.head.weight, F.one_hot(torch.tensor([target]), logits.shape[1]).float())
    cam = torch.zeros_like(x)
    cam[:, 0] = r
    cams = []
    for layer, s in zip(reversed(vit.encoder.layers), reversed(saved)):
        r1, r2 = _add([s["y"], s["m"]], cam)
        r2 = _linear(s["h2"], layer.mlp[0].weight, _linear(s["g"], layer.mlp[3].weight, r2))
        cam = _clone(s["y"], [r1, r2])
        r1, r2 = _add([s["x"], s["a"]], cam)
        r2 = _linear(s["ctx"], layer.self_attention.out_proj.weight, r2)
        r2 = r2.reshape(1, -1, heads, r2.shape[-1] // heads).transpose(1, 2)
        cam_a, cam_v = _simple(lambda u, w: torch.einsum("bhij,bhjd->bhid", u, w), [s["attn"], s["v"]], r2)
        cam_a, cam_v = cam_a / 2, cam_v / 2
        cams.append(cam_a)
        cam_q, cam_k = _simple(lambda u, w: torch.einsum("bhid,bhjd->bhij", u, w), [s["q"], s["k"]], cam_a)
        cam_q, cam_k = cam_q / 2, cam_k / 2
        cam_qkv = torch.cat(
            [t.transpose(1, 2).reshape(1, -1, x.shape[-1]) for t in (cam_q, cam_k, cam_v)], -1
        )
        cam = _clone(s["x"], [r1, _linear(s["h"], layer.self_attention.in_proj_weight, cam_qkv)])
    cams.reverse()
    n = x.shape[1]
    layers = [(g[0] * c[0]).clamp(min=0).mean(0) + torch.eye(n) for g, c in zip(grads, cams)]
    joint = layers[start_layer]
    for m in layers[start_layer + 1 :]:
        joint = m @ joint
    return logits[0], joint[0, 1:].reshape(4, 4)


def _random_vit(seed: int = 0) -> torchvision.models.VisionTransformer:
    torch.manual_seed(seed)
    vit = tiny_vit().eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision initializes the head to zero: no relevance at all
    return vit


@pytest.mark.parametrize("start_layer", [0, 1])
def test_matches_per_image_reference(start_layer):
    vit = _random_vit()
    images, targets = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 3])
    method = saliency.get("tibav")(vit, start_layer=start_layer)
    maps = method(images, targets, upsample=False, normalize=False)
    assert maps.shape == (3, 4, 4)
    for image, target, got in zip(images, targets.tolist(), maps):
        logits, expected = _reference(vit, image, target, start_layer)
        torch.testing.assert_close(
            logits, vit(image[None])[0], rtol=1e-5, atol=1e-5
        )  # the reference's forward
        assert expected.abs().sum() > 0
        torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(
        maps[1], method(images[1:2], [1], upsample=False, normalize=False)[0]
    )  # class-specific


def test_timm_vit_matches_torchvision_weights():
    timm = pytest.importorskip("timm")
    vit = _random_vit(1)
    t = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=5,
        qkv_bias=True,
    ).eval()
    mapping = {
        "patch_embed.proj": "conv_proj",
        "cls_token": "class_token",
        "pos_embed": "encoder.pos_embedding",
        "norm": "encoder.ln",
        "head": "heads.head",
    }
    tv = dict(vit.named_parameters())
    with torch.no_grad():
        for name, p in t.named_parameters():
            if name.startswith("blocks."):
                i, rest = name.split(".", 2)[1:]
                rest = (
                    rest.replace("norm1", "ln_1")
                    .replace("norm2", "ln_2")
                    .replace("mlp.fc1", "mlp.0")
                    .replace("mlp.fc2", "mlp.3")
                    .replace("attn.proj", "self_attention.out_proj")
                    .replace("attn.qkv.weight", "self_attention.in_proj_weight")
                    .replace("attn.qkv.bias", "self_attention.in_proj_bias")
                )
                source = f"encoder.layers.encoder_layer_{i}.{rest}"
            else:
                base, _, leaf = name.rpartition(".")
                source = f"{mapping[base]}.{leaf}" if base else mapping[name]
            p.copy_(tv[source])
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(t(images), vit(images), rtol=1e-4, atol=1e-5)
    got = saliency.get("transformerattribution")(t)(images, [2, 4], upsample=False, normalize=False)
    expected = saliency.get("transformerattribution")(vit)(images, [2, 4], upsample=False, normalize=False)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)


class _ScaledBlock(torchvision.models.vision_transformer.EncoderBlock):
    def forward(self, x):
        return 2 * super().forward(x)


def test_bad_inputs():
    vit = _random_vit()
    with pytest.raises(ValueError, match="needs a torchvision or timm ViT"):
        saliency.get("tibav")(torchvision.models.resnet18(num_classes=5))
    with pytest.raises(ValueError, match=r"start_layer must be an int in \[0, 2\)"):
        saliency.get("tibav")(vit, start_layer=2)
    with pytest.raises(ValueError, match="takes no layer"):
        saliency.get("tibav")(vit, layer="encoder.ln")
    block = vit.encoder.layers[1]
    odd = _ScaledBlock(2, 16, 32, 0.0, 0.0)
    odd.load_state_dict(block.state_dict())
    vit.encoder.layers[1] = odd
    with pytest.raises(ValueError, match="standard pre-norm ViT block"):
        saliency.get("tibav")(vit)(torch.randn(1, 3, 32, 32))
    assert not any(m._forward_hooks for m in vit.modules())  # hooks removed on the error


def test_model_left_as_found_and_works_under_inference_mode():
    from conftest import assert_same_state, state_snapshot

    vit = _random_vit()
    vit.train()
    before = state_snapshot(vit)
    with torch.inference_mode():
        maps = saliency.get("tibav")(vit)(torch.randn(2, 3, 32, 32), [0, 1])
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert_same_state(before, state_snapshot(vit))
