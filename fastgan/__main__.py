"""``python -m fastgan``: the ``fastgan`` command (for interpreters whose scripts are not on PATH)."""
import sys

from fastgan.cli import main

sys.exit(main())
