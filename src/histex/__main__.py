"""``python -m histex``: the command line where the ``histex`` script is not on the PATH (a notebook's kernel)."""

import sys

from histex.cli import main

sys.exit(main())
