"""`python -m orchestrator.represent results/<sweep>`: activations, CKA, PWCCA and dimensionality between a finished sweep's trials.

The command users type; the launcher itself is orchestrator/analysis/represent.py (with the other
after-training launchers), the work per trial is in trainer/analysis/.
"""

import sys

from orchestrator.analysis.represent import main
from trainer.cli import cli

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli(main))
