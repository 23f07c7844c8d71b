"""What a fit shows while it runs: ``verbose`` log lines on stderr and the tqdm progress bar.

The log records go to the ``l0_calibrate`` logger; with ``verbose=True``
and no logging configured by the application, :func:`verbose_handler`
attaches a stderr handler that writes through tqdm (so the bar is not
broken) and :func:`remove_handler` takes it off again after the fit.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .fit_options import FitOptions

__all__ = ["progress_bar", "remove_handler", "verbose_handler"]

logger = logging.getLogger("l0_calibrate")


class _TqdmHandler(logging.Handler):
    """Writes log records through tqdm so they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def verbose_handler(verbose: bool) -> logging.Handler | None:
    """Attach a stderr handler for ``verbose=True`` when the application configured no logging.

    Returns the handler (give it to :func:`remove_handler` after the fit), or None.

    Examples
    --------
    >>> verbose_handler(False) is None
    True
    """
    if not verbose or logger.hasHandlers():
        return None
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
        handler._l0_reset_level = True  # type: ignore[attr-defined]
    return handler


def remove_handler(handler: logging.Handler | None) -> None:
    """Take off a handler :func:`verbose_handler` attached (None: nothing to do).

    Examples
    --------
    >>> remove_handler(verbose_handler(True))
    """
    if handler is not None:
        logger.removeHandler(handler)
        if getattr(handler, "_l0_reset_level", False):
            logger.setLevel(logging.NOTSET)


def progress_bar(total: int, opts: FitOptions, verbose: bool) -> Any:
    """A tqdm bar over ``total`` epochs when ``opts.progress`` (default: ``verbose``) asks for one.

    Examples
    --------
    >>> progress_bar(100, FitOptions(), verbose=False) is None
    True
    """
    show = opts.progress if opts.progress is not None else verbose
    if not show or total == 0:
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(
        total=total,
        desc="calibrating",
        unit="epoch",
        disable=None if opts.progress is None else False,
        leave=False,
    )
