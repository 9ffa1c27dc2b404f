"""``python -m brev_standin <brev arguments>``: one call of the stand-in ``brev`` CLI."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
