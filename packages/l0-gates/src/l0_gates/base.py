"""``L0Gate``: a vector of gates of any registered type, one per item."""

from __future__ import annotations

from typing import Any

import torch
from l0_core import (
    deterministic_gates,
    gate_temperature,
    resolve_init_prob_active,
    set_gate_temperature,
)
from l0_core.checks import check_device, check_dtype, check_int, check_temperature
from torch import Tensor, nn

from ._data import resolve_seed
from ._training import build_gate

__all__ = ["L0Gate"]


class L0Gate(nn.Module):
    """Generic L0 gate over ``size`` items (samples, features, groups...).

    The gate itself is built by name through :func:`l0_core.make_gate`, so any
    gate type registered by a plugin works. ``L0Gate`` implements the l0-core
    ``Gate`` protocol (``forward``, ``l0_penalty``, ``prob_active``,
    ``temperature``), so l0-core's penalties and temperature schedules find it
    inside any model.

    Parameters
    ----------
    size : int
        Number of items to gate.
    temperature : float, default 0.5
        Gate temperature.
    init_prob_active : float, default 0.5
        Initial probability that a gate is active.
    gate : str or type, default "hard_concrete"
        Registered gate type (see ``l0_core.available("gates")``) or a class.
    seed : int, optional
        Seed of the gate's own random generator; results are bit-identical on
        CPU for a given seed. ``None`` draws a seed from torch's global RNG.
    device, dtype : optional
        Where the gate parameters live and their dtype.
    init_mean : float, optional
        Deprecated; l0-python 0.6.2's keyword with 0.6.2's meaning, the
        initial logit mean ``logit(init_mean)``. Translated to the
        ``init_prob_active`` a Hard Concrete gate with those logits has at
        ``temperature``, with a ``DeprecationWarning``; passing both is a
        ``TypeError``.

    Attributes
    ----------
    gates : nn.Module
        The underlying gate module.
    selection_ : Tensor or None
        Sorted indices chosen by a subclass's ``fit``; ``None`` before.

    Examples
    --------
    >>> gate = L0Gate(100, temperature=0.3, init_prob_active=0.7, seed=0)
    >>> gate.get_gates().shape
    torch.Size([100])
    >>> x = torch.ones(100, 3)
    >>> gate.eval().apply_gates(x, dim=0).shape
    torch.Size([100, 3])
    """

    def __init__(
        self,
        size: int,
        temperature: float = 0.5,
        init_prob_active: float | None = None,
        *,
        gate: str | type = "hard_concrete",
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        init_mean: float | None = None,
    ) -> None:
        super().__init__()
        self.size = check_int(size, "size", min_val=1, hint="pass e.g. L0Gate(size=100)")
        temperature = check_temperature(temperature, hint="pass e.g. 0.25")
        self.init_prob_active = resolve_init_prob_active(
            init_prob_active, init_mean, temperature, owner=type(self).__name__
        )
        dtype = check_dtype(dtype)
        self.gate_type = gate
        self.seed = resolve_seed(seed)
        self.device_arg = check_device(device)
        self.dtype_arg = dtype
        self.gates = build_gate(
            gate,
            self.size,
            temperature=temperature,
            init_prob_active=self.init_prob_active,
            seed=self.seed,
            device=self.device_arg,
            dtype=dtype,
        )
        self.selection_: Tensor | None = None

    # -- Gate protocol ---------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """Current temperature of the underlying gate (a float)."""
        return gate_temperature(self.gates)

    def set_temperature(self, temperature: float) -> None:
        """Set the temperature of the underlying gate.

        Examples
        --------
        >>> g = L0Gate(3, seed=0); g.set_temperature(0.2); round(g.temperature, 6)
        0.2
        """
        set_gate_temperature(
            self.gates,
            check_temperature(temperature, hint="pass e.g. 0.25"),
        )

    def forward(self) -> Tensor:
        """Same as :meth:`get_gates`.

        Examples
        --------
        >>> L0Gate(4, seed=0)().shape
        torch.Size([4])
        """
        return self.get_gates()

    def l0_penalty(self) -> Tensor:
        """Expected number of active gates (differentiable).

        Examples
        --------
        >>> round(L0Gate(10, init_prob_active=0.3, seed=0).l0_penalty().item())
        3
        """
        return self.gates.l0_penalty()

    def prob_active(self) -> Tensor:
        """Probability that each gate is active (differentiable).

        Examples
        --------
        >>> L0Gate(4, seed=0).prob_active().shape
        torch.Size([4])
        """
        return self.gates.prob_active()

    def deterministic(self) -> Tensor:
        """Eval-mode gate values; after ``fit`` the exact 0/1 selection mask.

        Examples
        --------
        >>> bool((L0Gate(3, init_prob_active=0.99, seed=0).deterministic() > 0).all())
        True
        """
        if self.selection_ is not None:
            ref = self.gates.prob_active()
            mask = torch.zeros(self.size, device=ref.device, dtype=ref.dtype)
            mask[self.selection_.to(ref.device)] = 1.0
            return mask
        return deterministic_gates(self.gates)

    # -- public helpers ----------------------------------------------------------------
    def get_gates(self) -> Tensor:
        """Gate values: a random sample in training mode, deterministic in eval mode.

        After a subclass's ``fit`` the eval-mode gates are exactly the
        selection (1 for chosen items, 0 otherwise).

        Examples
        --------
        >>> g = L0Gate(5, init_prob_active=0.99, seed=0).eval()
        >>> g.get_gates().tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
        """
        return self.gates() if self.training else self.deterministic()

    def apply_gates(self, x: Tensor, dim: int = 0) -> Tensor:
        """Multiply ``x`` by the gates along dimension ``dim``.

        Parameters
        ----------
        x : Tensor
            Tensor whose size along ``dim`` equals ``size``.
        dim : int, default 0
            Dimension indexed by the gated items.

        Returns
        -------
        Tensor
            ``x`` times the gates (a new tensor).

        Examples
        --------
        >>> g = L0Gate(2, init_prob_active=0.99, seed=0).eval()
        >>> g.apply_gates(torch.ones(3, 2), dim=1).tolist()
        [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
            raise ValueError(
                f"dim must be an int in [{-x.dim()}, {x.dim() - 1}] for x of shape {tuple(x.shape)}, got {dim!r}"
            )
        if x.shape[dim] != self.size:
            raise ValueError(
                f"x has size {x.shape[dim]} along dim {dim}, but the gate has {self.size} items; "
                "pass the dimension that indexes the gated items"
            )
        gates = self.get_gates().to(device=x.device)
        shape = [1] * x.dim()
        shape[dim] = self.size
        return x * gates.reshape(shape).to(dtype=torch.promote_types(x.dtype, gates.dtype))

    def apply(self, fn: Any, dim: int = 0) -> Any:  # type: ignore[override]
        """``nn.Module.apply`` for a function; :meth:`apply_gates` for a tensor.

        The published ``l0-python`` used ``gate.apply(x, dim)`` to gate a
        tensor; that still works, and ``gate.apply(init_fn)`` keeps its
        ``nn.Module`` meaning.

        Examples
        --------
        >>> g = L0Gate(2, init_prob_active=0.99, seed=0).eval()
        >>> g.apply(torch.ones(2)).tolist()
        [1.0, 1.0]
        """
        if isinstance(fn, Tensor):
            return self.apply_gates(fn, dim)
        return super().apply(fn)

    def get_penalty(self) -> Tensor:
        """L0 penalty: the expected number of active gates.

        Examples
        --------
        >>> round(L0Gate(10, init_prob_active=0.5, seed=0).get_penalty().item())
        5
        """
        return self.l0_penalty()

    @torch.no_grad()
    def get_active_indices(self, threshold: float | None = None) -> Tensor:
        """Indices of active items.

        Parameters
        ----------
        threshold : float, optional
            With ``None`` (default): the fitted selection when there is one,
            otherwise the items whose deterministic gate is non-zero. With a
            number: items whose deterministic gate exceeds it.

        Returns
        -------
        Tensor
            Sorted ``int64`` indices.

        Examples
        --------
        >>> L0Gate(4, init_prob_active=0.99, seed=0).get_active_indices().tolist()
        [0, 1, 2, 3]
        """
        if threshold is None:
            if self.selection_ is not None:
                return self.selection_.clone()
            threshold = 0.0
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number or None, got {type(threshold).__name__}")
        values = deterministic_gates(self.gates).reshape(-1)
        return (values > threshold).nonzero().reshape(-1)

    def _rebuild(self, device: torch.device | None, init_prob_active: float) -> None:
        """Re-create the gate from the seed (start of every ``fit``)."""
        self.gates = build_gate(
            self.gate_type,
            self.size,
            temperature=self.temperature,
            init_prob_active=init_prob_active,
            seed=self.seed,
            device=device,
            dtype=self.dtype_arg,
        )
        self.selection_ = None

    def _fit_device(self, data: Any) -> torch.device | None:
        """Explicit ``device`` if given, else the device of tensor ``data`` (else CPU)."""
        if self.device_arg is not None:
            return self.device_arg
        if isinstance(data, Tensor):
            return data.device
        return None

    def extra_repr(self) -> str:
        return f"size={self.size}, gate={self.gate_type!r}, seed={self.seed}"
