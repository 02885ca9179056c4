"""``python -m gdlab`` runs the command line (also how torchrun launches it)."""

import sys

from gdlab.cli import main

sys.exit(main())
