"""`python -m orchestrator.robust results/<sweep>`: robustness of a finished sweep's trials (corruptions, attacks).

The command users type; the launcher itself is orchestrator/analysis/robust.py (with the other
after-training launchers), the work per trial is in trainer/analysis/robustness_job.py.
"""

import sys

from orchestrator.analysis.robust import main
from trainer.cli import cli

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(cli(main))
