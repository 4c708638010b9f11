"""`python -m r1kit` (what `torchrun ... -m r1kit STAGE` and `r1kit STAGE --nproc N` run)."""

import sys

from r1kit.cli import main

sys.exit(main())
