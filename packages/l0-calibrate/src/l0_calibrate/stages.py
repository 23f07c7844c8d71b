"""Stage timing and one progress bar for a multi-stage calibration pipeline.

:class:`StageClock` times named stages (``with clock.stage("polish"): ...``),
logs each stage's start, end and duration on the ``l0_calibrate`` logger,
keeps the totals in :attr:`StageClock.times` (seconds per stage, summed when
a stage runs more than once) and where each stage ran in
:attr:`StageClock.devices`, and advances one optional tqdm bar that spans
the whole pipeline: the training epochs (:meth:`StageClock.tick`) and one
step per later stage.

When the pipeline computes on an accelerator (``device="cuda"``), a stage
that runs on the CPU says so once, with its reason, on the ``l0_calibrate``
logger, and is recorded as ``"cpu"`` (or ``"<device>+cpu"`` for a stage
whose large products run on the device and the rest on the CPU).
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
    device : str or torch.device, default "cpu"
        The compute device of the pipeline: a stage run elsewhere (on the
        CPU while this is an accelerator) is logged once with its reason.

    Attributes
    ----------
    times : dict of str to float
        Seconds per stage.
    devices : dict of str to str
        Where each stage ran (``"cpu"``, ``"cuda:0"``, ``"cuda:0+cpu"``), for
        the stages started with a ``device``.

    Examples
    --------
    >>> clock = StageClock(device="cuda:0")
    >>> with clock.stage("polish", "scipy dual Newton", device="cpu"):
    ...     pass
    >>> list(clock.times), clock.times["polish"] >= 0.0, clock.devices
    (['polish'], True, {'polish': 'cpu'})
    """

    def __init__(
        self,
        progress: bool | None = False,
        total: int = 0,
        desc: str = "calibrating",
        device: Any = "cpu",
    ):
        self.times: dict[str, float] = {}
        self.devices: dict[str, str] = {}
        self.device = str(device)
        self._told: set[str] = set()
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
    def stage(self, name: str, note: str = "", device: Any = None) -> Iterator[None]:
        """Time the block as stage ``name`` (logged on start and end; ``note`` says where it runs).

        ``device``: where the stage computes (recorded in :attr:`devices`;
        ``"cpu"`` or ``"<device>+cpu"`` while the pipeline's device is an
        accelerator is logged once per stage, ``note`` giving the reason).
        """
        self.start(name, note, device)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, name: str, note: str = "", device: Any = None) -> None:
        """Start stage ``name`` (for code that cannot sit in a ``with`` block)."""
        if device is not None:
            where = str(device)
            self.devices[name] = where
            on_cpu = where == "cpu" or where.endswith("+cpu")
            if on_cpu and not self.device.startswith("cpu") and name not in self._told:
                self._told.add(name)
                logger.info(
                    "stage %s runs %s on the CPU (compute device %s): %s",
                    name,
                    "partly" if where != "cpu" else "wholly",
                    self.device,
                    note or "no device implementation",
                )
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
