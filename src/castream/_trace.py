"""One recorded forward pass: every module's input and output, and every top-level torch function call,
in execution order, with tensor identities. Used to describe a classifier automatically (backbones).

The forward runs on the meta device (parameters and buffers substituted by meta tensors through
``torch.func.functional_call``: shapes only, no computation, the model is neither copied nor modified);
a model whose forward cannot (data-dependent control flow) is traced with one real forward on a zero
image of the same size instead, on the model's device, and the trace says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from ._hooks import forward_hooks, frozen_eval


@dataclass
class Event:
    """A module's forward (``module`` set) or a torch function call (``function`` set)."""

    index: int  # order of completion; a module's ``start`` is the order of its pre-hook
    start: int
    name: str  # module name, or the function's name
    inputs: list[Tensor]
    output: object
    module: nn.Module | None = None
    inplace: bool = False

    @property
    def shape(self) -> tuple[int, ...] | None:
        return tuple(self.output.shape) if isinstance(self.output, Tensor) else None


@dataclass
class Trace:
    events: list[Event] = field(default_factory=list)
    output: object = None
    real: str | None = None  # why a real forward was needed (None: fake tensors)
    counter: int = 0

    def tick(self) -> int:
        self.counter += 1
        return self.counter

    def modules(self) -> list[Event]:
        return [e for e in self.events if e.module is not None]

    def calls(self) -> list[Event]:
        return [e for e in self.events if e.module is None]


def _tensors(values) -> list[Tensor]:
    return [v for v in values if isinstance(v, Tensor)]


class _CallLog(TorchFunctionMode):
    """Records top-level torch function calls (calls made inside another call are not seen)."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        start = self.trace.tick()
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name not in ("__get__", "_set_grad_enabled"):
            inplace = bool(kwargs.get("inplace", False)) or (name.endswith("_") and not name.startswith("_"))
            inputs = _tensors(chain(args, kwargs.values()))
            self.trace.events.append(Event(self.trace.tick(), start, name, inputs, out, inplace=inplace))
        return out


def _run(forward, model: nn.Module, trace: Trace) -> None:
    """Call ``forward()`` with every submodule hooked and top-level torch calls logged into ``trace``."""
    starts: dict[int, list[int]] = {}

    def pre(module: nn.Module, args: tuple) -> None:
        starts.setdefault(id(module), []).append(trace.tick())

    def post(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            start = starts[id(module)].pop()
            trace.events.append(Event(trace.tick(), start, name, _tensors(args), output, module=module))

        return hook

    named = [(n, m) for n, m in model.named_modules() if n]
    with (
        forward_hooks([(m, pre) for _, m in named], pre=True),
        forward_hooks([(m, post(n)) for n, m in named]),
        _CallLog(trace),
    ):
        trace.output = forward()


def zeros_input(
    model: nn.Module, input_size: tuple[int, ...], device: str | torch.device | None = None
) -> Tensor:
    """A zero image batch in the model's floating dtype, on its device (or ``device``)."""
    reference = next(chain(model.parameters(), model.buffers()), None)
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    device = device or (reference.device if reference is not None else "cpu")
    return torch.zeros(input_size, dtype=dtype, device=device)


def trace_forward(model: nn.Module, input_size: tuple[int, ...]) -> Trace:
    """Record one forward of ``model`` in eval mode without autograd; the model is left as found."""
    meta = {
        name: torch.empty_like(t, device="meta")
        for name, t in chain(model.named_parameters(remove_duplicate=False), model.named_buffers())
    }
    with frozen_eval(model), torch.no_grad():
        trace = Trace()
        try:
            x = zeros_input(model, input_size, "meta")
            _run(lambda: functional_call(model, meta, (x,), tie_weights=False, strict=False), model, trace)
            return trace
        except Exception as err:  # data-dependent control flow: fall back to one real forward
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        trace = Trace(real=reason)
        x = zeros_input(model, input_size)
        _run(lambda: model(x), model, trace)
        return trace
