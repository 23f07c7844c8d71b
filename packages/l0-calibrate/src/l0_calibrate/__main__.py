"""``python -m l0_calibrate`` runs the ``l0-calibrate`` command."""

import sys

from .cli import main

sys.exit(main())
