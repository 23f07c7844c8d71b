"""A temperature schedule: hold the initial temperature, then a cosine decay."""

from __future__ import annotations

import math

__all__ = ["PLATEAU", "plateau_cosine"]

#: Fraction of the schedule spent at the initial temperature.
PLATEAU = 0.2


def plateau_cosine(progress: float, initial: float, final: float) -> float:
    """Stay at ``initial`` for the first 20 % of training, then cosine-anneal to ``final``.

    Gates first learn which items matter at a relaxed temperature; the
    temperature then falls smoothly so the gates harden towards 0 or 1.

    Parameters
    ----------
    progress : float
        Fraction of the schedule done, in ``[0, 1]``.
    initial, final : float
        Temperatures at ``progress == 0`` and ``progress == 1``.

    Returns
    -------
    float
        The temperature.

    Examples
    --------
    >>> plateau_cosine(0.1, 1.0, 0.1), round(plateau_cosine(0.6, 1.0, 0.1), 6)
    (1.0, 0.55)
    >>> plateau_cosine(1.0, 1.0, 0.1)
    0.1
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must lie in [0, 1], got {progress!r}")
    if progress <= PLATEAU:
        return initial
    if progress >= 1.0:
        return final
    phase = (progress - PLATEAU) / (1.0 - PLATEAU)
    return final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * phase))
