"""`python -m orchestrator.ablate results/<sweep>`: channel ablations of a finished sweep's kept checkpoints.

The command users type; the launcher itself is orchestrator/analysis/ablate.py (with the other
after-training launchers), the work per trial is in trainer/analysis/.
"""

import sys

from orchestrator.analysis.ablate import main
from trainer.cli import cli

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli(main))
