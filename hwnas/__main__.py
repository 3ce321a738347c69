"""`python -m hwnas` (and `torchrun -m hwnas`) run the CLI."""

import sys

from hwnas.cli import main

sys.exit(main())
