"""``python -m ocnna_fast.cli`` (what ``torchrun -m ocnna_fast.cli prune ...`` launches)."""

import sys

from . import main

sys.exit(main())
