"""`python -m orchestrator.collect results/<sweep> [--full] [--no-figures] [--timings]`: see orchestrator.collect.command."""

import sys

from orchestrator.collect.command import main
from trainer.cli import cli

if __name__ == "__main__":
    sys.exit(cli(main))
