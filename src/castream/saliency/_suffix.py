"""What runs after one layer, as a function of its output: channel ablations evaluate only that part.

Ablating channel k of a layer changes nothing before it, so Ablation-CAM needs, per ablated copy, only the
network after the layer (for a ResNet's last stage: the pooling and the head). :func:`split_after` traces
the model with ``torch.fx`` and cuts its graph at the layer: the suffix takes the layer's output and the
earlier values it still reads (a skip connection around the layer, say), which one recorded forward of the
clean images provides. A model that does not trace, or whose suffix does not reproduce the clean logits,
gives None, and the caller keeps the exact full forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn


class Suffix:
    """``Suffix(model, layer)``: :meth:`record` the clean forward once, then :meth:`__call__` evaluates the
    part of the model after ``layer`` on replaced outputs of it, for a subset of the recorded images."""

    def __init__(self, graph: fx.GraphModule, cut: fx.GraphModule, layer: fx.Node, saved: list[fx.Node]):
        self.graph, self.cut, self.layer, self.saved = graph, cut, layer, saved
        self._values: list = []

    def record(self, images: Tensor) -> tuple[Tensor, object]:
        """(the layer's output, the model's output) of one forward of ``images``; the values the suffix
        reads are kept for :meth:`__call__`."""
        wanted = {self.layer, *self.saved}
        found: dict[fx.Node, object] = {}

        class Recorder(fx.Interpreter):
            def run_node(self, node: fx.Node):
                result = super().run_node(node)
                if node in wanted:
                    found[node] = result
                return result

        out = Recorder(self.graph).run(images)
        self._values = [found[n] for n in self.saved]
        self._output, self._batch = found[self.layer], images.shape[0]
        return self._output, out

    def layer_output(self, index: Tensor) -> Tensor:
        """The recorded output of the layer for images ``index``."""
        return self._output[index]

    def __call__(self, output: Tensor, index: Tensor):
        """The model's output with the layer's output replaced by ``output`` for recorded images ``index``."""
        values = [v[index] if isinstance(v, Tensor) else v for v in self._values]
        return self.cut(output, *values)

    def batch_values_only(self) -> bool:
        """Whether every recorded value is per image (a tensor with a batch dimension) or a constant that
        does not depend on the batch: what :meth:`__call__` can index."""
        return all(
            (isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self._batch)
            or isinstance(v, bool | float | str | type(None))
            for v in self._values
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
    return Suffix(graph, fx.GraphModule(graph, cut), cut_at, saved)


def reproduces(clean: Tensor, found: Tensor) -> bool:
    """Whether the suffix's logits of the unchanged layer output are the model's own (to float rounding):
    the check that keeps a traced graph that departs from the eager forward from being used."""
    scale = clean.abs().amax().clamp(min=1.0)
    return found.shape == clean.shape and bool(
        torch.allclose(found.float(), clean.float(), rtol=0, atol=1e-5 * float(scale))
    )
