"""What runs after one layer, as a function of its output: channel ablations evaluate only that part.

Ablating channel k of a layer changes nothing before it, so Ablation-CAM needs, per ablated copy, only the
network after the layer (for a ResNet's last stage: the pooling and the head). :func:`split_after` traces
the model with ``torch.fx`` and cuts its graph at the layer: the suffix takes the layer's output and the
earlier values it still reads (a skip connection around the layer, say), which one recorded forward of the
clean images provides. A model that does not trace, or whose suffix does not reproduce the clean logits,
gives None, and the caller keeps the exact full forward.

When the suffix begins with operations that act on each channel alone and map a zero channel to zero
(global pooling, ReLU, flatten of a pooled map: :data:`CHANNELWISE`), ablating channel k of the layer is
ablating channel k of their output, so the ablated copies start there: for a ResNet, K vectors of C pooled
values through the head instead of K maps of C x H x W through the pooling. :meth:`Suffix.ablate` takes
that path only when one recorded check shows it gives the full suffix's outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

# operations acting on each channel alone with f(0) = 0: an ablated channel stays ablated through them
CHANNELWISE = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.ReLU,
    nn.Identity,
    nn.Dropout,
    nn.Flatten,
)
CHANNELWISE_FUNCTIONS = (
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.avg_pool2d,
    F.max_pool2d,
    F.relu,
    torch.relu,
    torch.flatten,
    torch.mean,
    torch.amax,
)
CHANNELWISE_METHODS = ("relu", "flatten", "mean", "amax")


class Suffix:
    """``Suffix(model, layer)``: :meth:`record` the clean forward once, then :meth:`__call__` evaluates the
    part of the model after ``layer`` on replaced outputs of it, and :meth:`ablate` on outputs with one
    channel zeroed, for a subset of the recorded images."""

    def __init__(self, graph: fx.GraphModule, layer: fx.Node, cut: tuple, pooled: tuple | None = None):
        self.graph, self.layer = graph, layer
        self.cut, self.saved = cut  # (the suffix after the layer, the earlier values it reads)
        self.pooled = pooled  # (its channel-wise start's last node, the suffix after it, its values)
        self._values: dict[fx.Node, object] = {}
        self._pooled_checked = False

    def record(self, images: Tensor) -> tuple[Tensor, object]:
        """(the layer's output, the model's output) of one forward of ``images``; the values the suffix
        reads are kept for :meth:`__call__` and :meth:`ablate`."""
        wanted = {self.layer, *self.saved}
        if self.pooled is not None:
            wanted |= {self.pooled[0], *self.pooled[2]}
        found: dict[fx.Node, object] = {}

        class Recorder(fx.Interpreter):
            def run_node(self, node: fx.Node):
                result = super().run_node(node)
                if node in wanted:
                    found[node] = result
                return result

        out = Recorder(self.graph).run(images)
        self._values, self._batch, self._pooled_checked = found, images.shape[0], False
        return found[self.layer], out

    def layer_output(self, index: Tensor) -> Tensor:
        """The recorded output of the layer for images ``index``."""
        return self._values[self.layer][index]

    def _read(self, nodes: list[fx.Node], index: Tensor) -> list:
        return [v[index] if isinstance(v := self._values[n], Tensor) else v for n in nodes]

    def __call__(self, output: Tensor, index: Tensor):
        """The model's output with the layer's output replaced by ``output`` for recorded images ``index``."""
        return self.cut(output, *self._read(self.saved, index))

    def ablate(self, index: Tensor, channels: Tensor):
        """The model's output with channel ``channels[i]`` of the layer's output zeroed for recorded image
        ``index[i]``: from the channel-wise start's output when that is checked to agree, else from the
        layer's output."""
        if self._pooled_usable():
            start, head, saved = self.pooled
            return head(_zeroed(self._values[start], index, channels), *self._read(saved, index))
        return self(_zeroed(self._values[self.layer], index, channels), index)

    def _pooled_usable(self) -> bool:
        """Whether ablating at the channel-wise start's output is used: it keeps the layer's channels (same
        count, a value or map each), its values are per image, and it gives the full suffix's outputs,
        checked once per :meth:`record` on the first image's first, middle and last channels."""
        if self.pooled is not None and not self._pooled_checked:
            self._pooled_checked = True
            layer, (start, head, saved) = self._values[self.layer], self.pooled
            value = self._values[start]
            usable = (
                isinstance(value, Tensor)
                and value.dim() >= 2
                and value.shape[:2] == layer.shape[:2]
                and _indexable(self._values, saved, self._batch)
            )
            if usable:
                channels = torch.tensor(sorted({0, layer.shape[1] // 2, layer.shape[1] - 1}))
                channels = channels.to(layer.device)
                index = torch.zeros_like(channels)
                reference = self(_zeroed(layer, index, channels), index)
                found = head(_zeroed(value, index, channels), *self._read(saved, index))
                usable = isinstance(reference, Tensor) and reproduces(reference, found)
            if not usable:
                self.pooled = None
        return self.pooled is not None

    def batch_values_only(self) -> bool:
        """Whether every recorded value is per image (a tensor with a batch dimension) or a constant that
        does not depend on the batch: what :meth:`__call__` can index."""
        return _indexable(self._values, self.saved, self._batch)


def _zeroed(values: Tensor, index: Tensor, channels: Tensor) -> Tensor:
    """Copies of ``values[index]`` with channel ``channels[i]`` of copy i set to zero."""
    out = values[index].clone()
    out[torch.arange(len(index), device=out.device), channels] = 0
    return out


def _indexable(values: dict, nodes: list[fx.Node], batch: int) -> bool:
    return all(
        (isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch)
        or isinstance(v, bool | float | str | type(None))
        for v in (values[n] for n in nodes)
    )


def split_after(model: nn.Module, layer: str, forward_kwargs: dict | None = None) -> Suffix | None:
    """The :class:`Suffix` of ``model`` after module ``layer``, or None when the model does not trace with
    ``torch.fx``, calls ``layer`` other than once, or takes keyword arguments it cannot fix."""

    class Tracer(fx.Tracer):  # the layer stays one call, whatever it holds
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:
            return name == layer or super().is_leaf_module(module, name)

    try:  # any tracing failure keeps the exact full-forward path
        traced = Tracer().trace(model, concrete_args=dict(forward_kwargs) if forward_kwargs else None)
        graph = fx.GraphModule(model, traced)
    except Exception:
        return None
    nodes = list(graph.graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        return None
    (cut_at,) = calls
    cut = _cut(graph, nodes, cut_at)
    if cut is None:
        return None
    start = _channelwise_start(graph, cut_at)
    pooled = None if start is cut_at else (start, *(_cut(graph, nodes, start) or (None, None)))
    return Suffix(graph, cut_at, cut, pooled if pooled is not None and pooled[1] is not None else None)


def _cut(graph: fx.GraphModule, nodes: list[fx.Node], cut_at: fx.Node) -> tuple | None:
    """(the graph of what runs after node ``cut_at`` as a function of its value and of the earlier values
    it reads, those values' nodes), or None when the model's output does not depend on ``cut_at``."""
    after = nodes[nodes.index(cut_at) + 1 :]
    dependent = {cut_at}
    for node in after:
        if any(arg in dependent for arg in node.all_input_nodes):
            dependent.add(node)
    output = next(n for n in nodes if n.op == "output")
    if output not in dependent:
        return None
    needed = dict.fromkeys(
        arg for n in after if n in dependent for arg in n.all_input_nodes if arg not in dependent
    )
    saved = [n for n in needed if n.op != "get_attr"]  # parameters and buffers are read, not recorded
    cut = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut_at: cut.placeholder("layer_output")}
    for i, node in enumerate(saved):
        env[node] = cut.placeholder(f"saved_{i}")
    for node in needed:
        if node.op == "get_attr":
            env[node] = cut.node_copy(node)
    for node in after:
        if node in dependent:
            env[node] = cut.node_copy(node, lambda n: env[n])
    return fx.GraphModule(graph, cut), saved


def _channelwise_start(graph: fx.GraphModule, node: fx.Node) -> fx.Node:
    """The last node of the chain of :data:`CHANNELWISE` operations that starts at ``node``'s only user
    (each the only user of the one before, reading nothing else that varies); ``node`` itself when none."""
    while len(node.users) == 1:
        (user,) = node.users
        if user.all_input_nodes != [node] or not _is_channelwise(graph, user):
            break
        node = user
    return node


def _is_channelwise(graph: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(graph.get_submodule(node.target)) in CHANNELWISE
    if node.op == "call_function":
        return node.target in CHANNELWISE_FUNCTIONS
    return node.op == "call_method" and node.target in CHANNELWISE_METHODS


def reproduces(clean: Tensor, found: Tensor) -> bool:
    """Whether the suffix's logits of the unchanged layer output are the model's own (to float rounding):
    the check that keeps a traced graph that departs from the eager forward from being used."""
    scale = clean.abs().amax().clamp(min=1.0)
    return found.shape == clean.shape and bool(
        torch.allclose(found.float(), clean.float(), rtol=0, atol=1e-5 * float(scale))
    )
