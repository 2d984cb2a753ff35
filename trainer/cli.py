"""The trainer commands' exit codes and their one wrapper (trainer.run, trainer.group, trainer.ablate).

    0 done, 2 user mistake (one line on stderr), 3 trial failed (recorded in its status.json),
    75 another live process is running the trial (EX_TEMPFAIL: try later)
"""
from __future__ import annotations

import sys
from typing import Callable

from trainer.errors import UserError
from trainer.lock import TrialBusy

EXIT_DONE, EXIT_USER, EXIT_FAILED, EXIT_BUSY = 0, 2, 3, 75


def command(body: Callable[[], int]) -> int:
    """Run a trainer command: a user mistake is one line and exit 2, a busy trial exit 75."""
    try:
        return body()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER
    except TrialBusy as err:
        print(f"busy: {err}", file=sys.stderr)
        return EXIT_BUSY
