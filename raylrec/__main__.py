"""``python -m raylrec``: the ``raylrec`` command."""

import sys

from raylrec.cli import main

sys.exit(main())
