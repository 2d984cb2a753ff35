"""One-line errors for user mistakes, shared by every command.

A command's `main` is wrapped in `cli`: a `UserError` (bad grid, bad profile, missing data...)
prints `error: <one line>` on stderr and exits 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

from trainer.errors import UserError

__all__ = ["UserError", "cli"]

EXIT_USER = 2


def cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
