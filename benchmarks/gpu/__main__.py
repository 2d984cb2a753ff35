"""`python -m benchmarks.gpu`: see benchmarks/gpu/__init__.py."""

import sys

from benchmarks.gpu.cli import main

if __name__ == "__main__":
    sys.exit(main())
