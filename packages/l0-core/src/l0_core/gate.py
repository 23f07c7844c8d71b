"""The ``Gate`` protocol: what every gate type (built-in or plugin) provides.

Penalties, temperature schedules, the target-sparsity controller and the
layers of the sibling packages find gates through this protocol, never by
attribute names, so a third-party gate type works everywhere once it
implements these members.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .checks import check_temperature

__all__ = [
    "Gate",
    "GatedLayer",
    "is_gate",
    "is_gated_layer",
    "iter_gates",
    "set_gate_temperature",
    "gate_temperature",
    "deterministic_gates",
]


class _ModuleProtocolMeta(type(Protocol)):  # type: ignore[misc]
    """Protocol metaclass whose ``isinstance`` looks members up dynamically.

    From Python 3.12 on, ``isinstance`` against a runtime-checkable protocol
    uses ``inspect.getattr_static``, which cannot see what ``nn.Module``
    keeps outside ``__dict__`` (a ``temperature`` *buffer*, for one). The
    protocols below therefore check their members with plain ``getattr``, so
    the answer is the same on every Python version.
    """

    def __instancecheck__(cls, obj: Any) -> bool:
        spec = _PROTOCOL_MEMBERS.get(cls)
        if spec is None:  # a class that subclasses the protocol explicitly
            return super().__instancecheck__(obj)
        methods, data = spec
        return all(callable(getattr(obj, name, None)) for name in methods) and all(
            hasattr(obj, name) for name in data
        )


#: protocol -> (method names, data member names), checked by ``isinstance``
_PROTOCOL_MEMBERS: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


@runtime_checkable
class Gate(Protocol, metaclass=_ModuleProtocolMeta):
    """Structural type of a gate module.

    A gate is an ``nn.Module`` whose ``forward()`` (called with no arguments)
    returns gate values in ``[0, 1]`` with the gate's shape: a stochastic,
    differentiable sample in training mode and a deterministic gate in eval
    mode, exactly ``0`` for a pruned item.

    Members
    -------
    forward() -> Tensor
        Gate values, shape ``gate.shape``.
    l0_penalty() -> Tensor
        Differentiable expected number of non-zero gates (a scalar).
    prob_active() -> Tensor
        Probability that each gate is non-zero, shape ``gate.shape``.
    temperature
        The temperature, a tensor buffer (set it with
        :func:`set_gate_temperature`) or a float attribute.

    Gate classes registered through the ``l0_register_gates`` hook are
    constructed as ``GateClass(*shape, temperature=..., init_prob_active=...,
    device=..., dtype=..., generator=...)`` where ``init_prob_active`` is the
    initial probability that a gate is non-zero. They may also provide
    ``deterministic()`` (the eval-mode gate without switching modes).

    Examples
    --------
    >>> from l0_core import HardConcrete, Gate
    >>> isinstance(HardConcrete(4), Gate)
    True
    """

    temperature: Tensor | float

    def forward(self) -> Tensor:
        """Gate values: a sample in training mode, the deterministic gate in eval mode."""
        ...

    def l0_penalty(self) -> Tensor:
        """Differentiable expected number of non-zero gates (a scalar)."""
        ...

    def prob_active(self) -> Tensor:
        """Probability that each gate is non-zero, shaped like the gate."""
        ...


_PROTOCOL_MEMBERS[Gate] = (("forward", "l0_penalty", "prob_active"), ("temperature",))


@runtime_checkable
class GatedLayer(Protocol, metaclass=_ModuleProtocolMeta):
    """Structural type of a layer whose weights are multiplied by gates.

    Members
    -------
    l0_penalty() -> Tensor
        Expected number of non-zero gates of the layer.
    l2_penalty() -> Tensor
        The paper's expected L2 penalty: each gated weight group's squared
        norm weighted by the probability that its gate is active.
    active_parameter_count() -> int
        Parameters that remain once the deterministic gates are applied.
    parameter_count() -> int
        Parameters of the equivalent ungated layer (gate logits excluded).

    Examples
    --------
    >>> import torch
    >>> class Layer(torch.nn.Module):
    ...     def l0_penalty(self): return torch.tensor(0.0)
    ...     def l2_penalty(self): return torch.tensor(0.0)
    ...     def active_parameter_count(self): return 0
    ...     def parameter_count(self): return 0
    >>> isinstance(Layer(), GatedLayer)
    True
    """

    def l0_penalty(self) -> Tensor:
        """Expected number of non-zero gates of the layer."""
        ...

    def l2_penalty(self) -> Tensor:
        """Expected L2 penalty: each gated group's squared norm times its keep probability."""
        ...

    def active_parameter_count(self) -> int:
        """Parameters left once the deterministic gates are applied."""
        ...

    def parameter_count(self) -> int:
        """Parameters of the equivalent ungated layer."""
        ...


_PROTOCOL_MEMBERS[GatedLayer] = (
    ("l0_penalty", "l2_penalty", "active_parameter_count", "parameter_count"),
    (),
)


def is_gate(obj: object) -> bool:
    """Return whether ``obj`` is a module that implements :class:`Gate`.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> is_gate(HardConcrete(3)), is_gate(torch.nn.Linear(2, 2))
    (True, False)
    """
    return isinstance(obj, torch.nn.Module) and isinstance(obj, Gate)


def is_gated_layer(obj: object) -> bool:
    """Return whether ``obj`` is a module that implements :class:`GatedLayer`.

    Examples
    --------
    >>> is_gated_layer(torch.nn.Linear(2, 2))
    False
    """
    return isinstance(obj, torch.nn.Module) and isinstance(obj, GatedLayer)


def iter_gates(model: torch.nn.Module, prefix: str = "") -> Iterator[tuple[str, torch.nn.Module]]:
    """Yield ``(name, gate)`` for every gate module inside ``model``.

    Gates nested inside another gate are not yielded separately (the outer
    gate accounts for them), so penalties are never counted twice.

    Parameters
    ----------
    model : torch.nn.Module
        Any module; it may itself be a gate.
    prefix : str
        Name given to ``model`` itself.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> m = torch.nn.ModuleDict({"a": HardConcrete(2), "b": torch.nn.Linear(2, 2)})
    >>> [name for name, _ in iter_gates(m)]
    ['a']
    """
    if is_gate(model):
        yield prefix, model
        return
    for name, child in model.named_children():
        yield from iter_gates(child, f"{prefix}.{name}" if prefix else name)


def gate_temperature(gate: torch.nn.Module) -> float:
    """Return a gate's temperature as a Python float.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> gate_temperature(HardConcrete(2, temperature=0.5))
    0.5
    """
    t: Any = gate.temperature  # a tensor buffer or a plain float (both allowed)
    return float(t.item()) if isinstance(t, Tensor) else float(t)


def set_gate_temperature(gate: torch.nn.Module, temperature: float) -> None:
    """Set a gate's temperature in place (tensor buffer or float attribute).

    Parameters
    ----------
    gate : torch.nn.Module
        A module implementing :class:`Gate`.
    temperature : float
        New temperature, strictly positive.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> g = HardConcrete(2)
    >>> set_gate_temperature(g, 0.25)
    >>> gate_temperature(g)
    0.25
    """
    temperature = check_temperature(temperature, hint="pass a value such as 2/3 or 0.1")
    if hasattr(gate, "set_temperature"):
        gate.set_temperature(temperature)
    elif isinstance(gate.temperature, Tensor):
        with torch.no_grad():
            gate.temperature.fill_(temperature)
    else:
        gate.temperature = temperature  # type: ignore[assignment]  # a float attribute


def deterministic_gates(gate: torch.nn.Module) -> Tensor:
    """Return the eval-mode (deterministic) gate values without grad.

    Uses ``gate.deterministic()`` when the gate has it; otherwise calls the
    gate in eval mode and restores its training flag.

    Examples
    --------
    >>> from l0_core import HardConcrete
    >>> deterministic_gates(HardConcrete(3, init_prob_active=0.99)).shape
    torch.Size([3])
    """
    with torch.no_grad():
        if hasattr(gate, "deterministic"):
            return gate.deterministic()
        was_training = gate.training
        gate.eval()
        try:
            return gate()
        finally:
            gate.train(was_training)
