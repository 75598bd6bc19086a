"""Guided backpropagation against hand-written references."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from castream.guided import guided_gradient, guided_relu


def test_guided_gradient_on_a_tiny_network_by_hand():
    torch.manual_seed(1)
    l1, l2 = nn.Linear(4, 6), nn.Linear(6, 3)
    net = nn.Sequential(l1, nn.ReLU(), l2).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        pre = l1(x)
        upstream = l2.weight[t]  # d y_t / d relu-output, (5, 6)
        guided = (upstream.clamp(min=0) * (pre > 0)) @ l1.weight  # positive grads through positive inputs
        standard = (upstream * (pre > 0)) @ l1.weight
    torch.testing.assert_close(guided_gradient(net, x, t), guided)
    # outside the mode nothing changes: the standard input gradient is torch.autograd.grad's
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xr).gather(1, t[:, None]).sum(), xr)
    torch.testing.assert_close(g, standard)


class _SwapGuided(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, high):
        ctx.save_for_backward(x)
        ctx.high = high
        return x.clamp(0, high)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        open_ = (x > 0) if ctx.high is None else (x > 0) & (x < ctx.high)
        return g.clamp(min=0) * open_, None


class _SwapReLU(nn.Module):
    def __init__(self, high=None):
        super().__init__()
        self.high = high

    def forward(self, x):
        return _SwapGuided.apply(x, self.high)


def _module_swap_reference(model, x, t):
    """The classic implementation: deep-copy and replace every ReLU/ReLU6 module (non in-place)."""
    ref = copy.deepcopy(model)
    for module in list(ref.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(module, child_name, _SwapReLU(6.0))
            elif isinstance(child, nn.ReLU):
                setattr(module, child_name, _SwapReLU())
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref(xr).gather(1, t[:, None]).sum(), xr)
    return g


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_guided_gradient_matches_module_swap(name):
    model = getattr(torchvision.models, name)(num_classes=5).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    t = torch.tensor([1, 3])
    types_before = [type(m) for m in model.modules()]
    torch.testing.assert_close(guided_gradient(model, x, t), _module_swap_reference(model, x, t))
    assert [type(m) for m in model.modules()] == types_before
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_functional_and_inplace_calls_are_guided():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            h = torch.relu_(h * 1.0)  # in-place, functional
            return self.b(torch.nn.functional.relu6(h - 0.1))

    net = Functional().double()
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        h = net.a(x)
        h1 = h.clamp(min=0)
        g = net.b.weight[t].clamp(min=0) * ((h1 - 0.1 > 0) & (h1 - 0.1 < 6))
        expected = (g.clamp(min=0) * (h > 0)) @ net.a.weight
    torch.testing.assert_close(guided_gradient(net, x, t), expected)


def test_no_relu_is_an_error():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="guided backpropagation is undefined"):
        guided_gradient(net, torch.randn(2, 3), torch.tensor([0, 1]))


def test_mode_counts_calls_and_forward_values_are_unchanged():
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    with torch.no_grad():
        expected = model(x)
    with guided_relu() as mode:
        out = model(x)
    torch.testing.assert_close(out, expected)
    assert mode.calls == 17  # stem + 2 per block x 8 blocks
