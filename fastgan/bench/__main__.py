"""``python -m fastgan.bench``: the same as ``fastgan bench``."""
import sys

from fastgan.bench.cli import main

sys.exit(main())
