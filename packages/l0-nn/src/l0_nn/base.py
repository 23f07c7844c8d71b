"""The common base of the gated layers: gate construction and the gate-level API."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from l0_core import (
    HardConcrete,
    deterministic_gates,
    get_gate_class,
    make_gate,
    set_gate_temperature,
)
from l0_core.checks import check_probability, check_temperature
from torch import Tensor, nn

from ._checks import check_factory, check_gate_kwargs

__all__ = ["L0Layer", "DEFAULT_INIT_SPARSITY", "uniform_init_"]

#: Default initial probability that a gate is exactly zero.
DEFAULT_INIT_SPARSITY = 0.1


#: The function ``export_pruned`` (set by :mod:`l0_nn.export` when it is imported, which
#: ``import l0_nn`` always does), so that the layers never import the exporter.
_EXPORTER: list[Callable[..., nn.Module]] = []


def register_exporter(fn: Callable[..., nn.Module]) -> None:
    """Install ``fn`` as the function behind :meth:`L0Layer.export` (done by ``l0_nn.export``).

    Examples
    --------
    >>> from l0_nn import export_pruned
    >>> register_exporter(export_pruned)  # what l0_nn.export does on import
    """
    _EXPORTER[:] = [fn]


def _exporter() -> Callable[..., nn.Module]:
    if not _EXPORTER:  # pragma: no cover - l0_nn/__init__ imports l0_nn.export
        raise RuntimeError("l0_nn.export is not loaded; import l0_nn first")
    return _EXPORTER[0]


class L0Layer(nn.Module):
    """Base class of the l0-nn layers whose weight groups are multiplied by gates.

    Subclasses own one gate module, ``self.gates``, made by
    :func:`l0_core.make_gate` from any registered gate type, and implement
    :class:`l0_core.GatedLayer` (``l0_penalty``, ``l2_penalty``,
    ``active_parameter_count``, ``parameter_count``), so l0-core's penalties,
    temperature schedules and target-sparsity controller find them.

    Attributes
    ----------
    gates : torch.nn.Module
        The gate module; ``gates()`` returns a sample in training mode and the
        deterministic gate (exactly 0 for a removed group) in eval mode.
    granularity : str
        What one gate switches off (``"input"``, ``"output"``, ``"weight"``,
        ``"channel"``).
    init_sparsity : float
        Initial probability that a gate is exactly zero.

    Examples
    --------
    >>> from l0_nn import L0Linear
    >>> isinstance(L0Linear(4, 2), L0Layer)
    True
    """

    gates: nn.Module
    weight: nn.Parameter
    bias: nn.Parameter | None
    granularity: str

    def _build_gates(
        self,
        shape: tuple[int, ...],
        *,
        gate: str | type,
        temperature: float,
        init_sparsity: float,
        gate_kwargs: Mapping[str, Any] | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        generator: torch.Generator | None,
    ) -> None:
        temperature = check_temperature(temperature, hint="use e.g. temperature=2/3")
        self.init_sparsity = check_probability(
            init_sparsity, "init_sparsity", hint="it is the initial P(gate == 0), e.g. 0.1"
        )
        kwargs = check_gate_kwargs(gate_kwargs)
        check_factory(device, dtype, generator)
        if not isinstance(gate, (str, type)):
            raise TypeError(
                f"gate must be a registered gate name or a gate class, got {type(gate).__name__}; "
                "e.g. gate='hard_concrete'"
            )
        cls = get_gate_class(gate)  # unknown name -> ValueError listing the names
        if issubclass(cls, HardConcrete):
            # No jitter by default, so that P(gate == 0) is exactly init_sparsity.
            kwargs.setdefault("init_std", 0.0)
        self.gate_type = gate if isinstance(gate, str) else cls.__name__
        self.gates = make_gate(
            cls,
            *shape,
            temperature=temperature,
            init_prob_active=1.0 - self.init_sparsity,
            device=device,
            dtype=dtype,
            generator=generator,
            **kwargs,
        )

    # -------------------------------------------------------------- gates
    def prob_active(self) -> Tensor:
        """Probability that each gate is non-zero (differentiable).

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> [round(p, 6) for p in L0Linear(3, 2, init_sparsity=0.25).prob_active().tolist()]
        [0.75, 0.75, 0.75]
        """
        return self.gates.prob_active()

    def deterministic_gates(self) -> Tensor:
        """The eval-mode gate values (no grad); exactly 0 for a removed group.

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> L0Linear(3, 2, init_sparsity=0.01).deterministic_gates().shape
        torch.Size([3])
        """
        return deterministic_gates(self.gates)

    def l0_penalty(self) -> Tensor:
        """Expected number of non-zero gates (differentiable scalar).

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> round(L0Linear(10, 2, init_sparsity=0.3).l0_penalty().item(), 4)
        7.0
        """
        return self.gates.l0_penalty()

    def num_active_gates(self) -> int:
        """Number of gates whose eval-mode value is non-zero.

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> L0Linear(5, 2, init_sparsity=0.01).num_active_gates()
        5
        """
        return int((self.deterministic_gates() > 0).sum().item())

    def num_gates(self) -> int:
        """Total number of gates.

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> L0Linear(5, 2, granularity="weight").num_gates()
        10
        """
        return int(self.deterministic_gates().numel())

    def sparsity(self) -> float:
        """Fraction of gates that are exactly zero in eval mode.

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> L0Linear(5, 2, init_sparsity=0.01).sparsity()
        0.0
        """
        return 1.0 - self.num_active_gates() / self.num_gates()

    def set_temperature(self, temperature: float) -> None:
        """Set the gate temperature in place.

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> layer = L0Linear(3, 2); layer.set_temperature(0.5)
        >>> round(float(layer.gates.temperature), 3)
        0.5
        """
        set_gate_temperature(self.gates, temperature)

    # ---------------------------------------------- l0-python 0.6 aliases
    def get_l0_penalty(self) -> Tensor:
        """Alias of :meth:`l0_penalty` (the l0-python 0.6 name).

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> L0Linear(3, 2).get_l0_penalty().ndim
        0
        """
        return self.l0_penalty()

    def get_l2_penalty(self) -> Tensor:
        """Alias of ``l2_penalty()`` (the l0-python 0.6 name).

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> L0Linear(3, 2).get_l2_penalty().ndim
        0
        """
        return self.l2_penalty()  # type: ignore[attr-defined]

    def get_sparsity(self) -> float:
        """Alias of :meth:`sparsity` (the l0-python 0.6 name).

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> L0Linear(3, 2, init_sparsity=0.01).get_sparsity()
        0.0
        """
        return self.sparsity()

    # ------------------------------------------------------------- export
    def effective_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        """Weight and bias multiplied by the eval-mode gates (no grad).

        This is exactly what the layer computes with in eval mode; pruning
        and export start from it.

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> w, b = L0Linear(3, 2).effective_weight_and_bias()
        >>> tuple(w.shape), tuple(b.shape)
        ((2, 3), (2,))
        """
        with torch.no_grad():
            z = self.deterministic_gates()
            w, b = self._gated(z)  # type: ignore[attr-defined]
            return w.detach().clone(), None if b is None else b.detach().clone()

    def to_plain(self) -> nn.Module:
        """The plain torch module this layer computes in eval mode (gates folded into the weights).

        Same shapes as the layer (nothing is sliced; :func:`l0_nn.export_pruned`
        does that); a removed group's weights are exactly 0. The exporter
        relies on this instead of knowing the layer classes.

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> layer = L0Linear(3, 2).eval()
        >>> plain = layer.to_plain()
        >>> type(plain).__name__, torch.equal(plain(torch.ones(1, 3)), layer(torch.ones(1, 3)))
        ('Linear', True)
        """
        w, b = self.effective_weight_and_bias()
        plain = self._plain_module(bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            plain.weight.copy_(w)
            if b is not None:
                plain.bias.copy_(b)
        return plain.train(self.training)

    def _plain_module(self, *, bias: bool, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """An uninitialised plain module of this layer's shapes (subclasses implement it)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its plain equivalent")

    def prune_(self, threshold: float | None = None) -> int:
        """Zero, in place, the weights (and gated biases) of the groups the gates remove.

        Parameters
        ----------
        threshold : float or None
            See :meth:`removed_groups`.

        Returns
        -------
        int
            Number of removed groups.

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> layer = L0Linear(3, 2, granularity="output", init_sparsity=0.5)
        >>> layer.prune_(threshold=0.6)
        2
        >>> layer.weight.abs().sum().item(), layer.bias.abs().sum().item()
        (0.0, 0.0)
        """
        removed = self.removed_groups(threshold)
        keep = (~removed).to(self.weight.dtype)
        with torch.no_grad():
            weight, bias = self._gated(keep)  # type: ignore[attr-defined]
            self.weight.copy_(weight)
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias)
        return int(removed.sum().item())

    def export(self, example_input: Tensor | None = None) -> nn.Module:
        """Shorthand for :func:`l0_nn.export_pruned(self, example_input) <l0_nn.export_pruned>`.

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> type(L0Linear(3, 2, init_sparsity=0.01).export().layer).__name__
        'Linear'
        """
        return _exporter()(self, example_input)

    def removed_groups(self, threshold: float | None = None) -> Tensor:
        """Boolean mask (gate shape) of the groups the gates remove.

        Parameters
        ----------
        threshold : float or None
            ``None``: a group is removed when its eval-mode gate is exactly 0.
            A number in ``[0, 1)``: when its probability of being active is
            ``<= threshold`` (the l0-python 0.6 rule, which used 0.05).

        Examples
        --------
        >>> from l0_nn import L0Linear
        >>> L0Linear(3, 2, init_sparsity=0.5).removed_groups(threshold=0.6).tolist()
        [True, True, True]
        """
        with torch.no_grad():
            if threshold is None:
                return self.deterministic_gates() == 0
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise TypeError(f"threshold must be None or a number in [0, 1), got {threshold!r}")
            if not 0.0 <= float(threshold) < 1.0:
                raise ValueError(
                    f"threshold must lie in [0, 1), got {threshold!r}; it is the probability "
                    "of being active at or below which a group is removed (e.g. 0.05)"
                )
            return self.prob_active() <= float(threshold)


def uniform_init_(tensor: Tensor, fan_in: int, generator: torch.Generator | None) -> None:
    """PyTorch's default Linear/Conv initialisation, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    (``kaiming_uniform_(a=sqrt(5))`` reduces to this bound for weights.)

    Examples
    --------
    >>> t = torch.empty(3, 4); uniform_init_(t, 4, torch.Generator().manual_seed(0))
    >>> bool((t.abs() <= 0.5).all())
    True
    """
    bound = 1.0 / fan_in**0.5 if fan_in > 0 else 0.0
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator)
