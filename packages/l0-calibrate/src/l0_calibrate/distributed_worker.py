"""Entry point of one worker of :func:`l0_calibrate.run_distributed`.

``torchrun ... -m l0_calibrate.distributed_worker JOB.pkl`` runs
:func:`l0_calibrate.distributed_launch.run_job` on ``JOB.pkl``. It is a
module of its own so that the package's ``__init__`` never imports the
module that ``-m`` executes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .distributed_launch import run_job

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker; returns the exit status.

    Examples
    --------
    >>> main([])
    2
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m l0_calibrate.distributed_worker JOB.pkl\n")
        return 2
    run_job(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
