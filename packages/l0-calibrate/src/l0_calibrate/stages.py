"""Stage timing and one progress bar for a multi-stage calibration pipeline.

:class:`StageClock` times named stages (``with clock.stage("polish"): ...``),
logs each stage's start, end and duration on the ``l0_calibrate`` logger,
keeps the totals in :attr:`StageClock.times` (seconds per stage, summed when
a stage runs more than once), and advances one optional tqdm bar that spans
the whole pipeline: the training epochs (:meth:`StageClock.tick`) and one
step per later stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["StageClock"]

logger = logging.getLogger("l0_calibrate")


class StageClock:
    """Times the stages of a pipeline and drives its progress bar.

    Parameters
    ----------
    progress : bool or None, default False
        Show a tqdm bar (None: only when stderr is a terminal).
    total : int, default 0
        Units of the bar: training epochs plus one per later stage.
    desc : str, default "calibrating"
        Label of the bar.

    Examples
    --------
    >>> clock = StageClock()
    >>> with clock.stage("polish"):
    ...     pass
    >>> list(clock.times), clock.times["polish"] >= 0.0
    (['polish'], True)
    """

    def __init__(self, progress: bool | None = False, total: int = 0, desc: str = "calibrating"):
        self.times: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._bar: Any = None
        if progress is None or progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit="step",
                disable=None if progress is None else False,
                leave=False,
            )

    @contextmanager
    def stage(self, name: str, note: str = "") -> Iterator[None]:
        """Time the block as stage ``name`` (logged on start and end; ``note`` says where it runs)."""
        self.start(name, note)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, name: str, note: str = "") -> None:
        """Start stage ``name`` (for code that cannot sit in a ``with`` block)."""
        logger.info("stage %s: start%s", name, f" ({note})" if note else "")
        if self._bar is not None:
            self._bar.set_postfix_str(name, refresh=False)
        self._started[name] = time.perf_counter()

    def stop(self, name: str) -> float:
        """End stage ``name``; returns its time and adds it to :attr:`times`."""
        took = time.perf_counter() - self._started.pop(name)
        self.times[name] = self.times.get(name, 0.0) + took
        logger.info("stage %s: end after %.3f s", name, took)
        return took

    def tick(self, n: int = 1) -> None:
        """Advance the bar by ``n`` units (epochs, or one finished stage)."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Fill and close the bar."""
        if self._bar is not None:
            self._bar.n = self._bar.total
            self._bar.close()
            self._bar = None
