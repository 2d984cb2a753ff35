"""Every command's exit codes and its one wrapper (trainer.run/group/ablate, orchestrator.*).

    0   done (trainer) / finished with every trial done (launchers)
    1   a launcher finished but some trials failed or are not finished (see its summary)
    2   user mistake: one line on stderr naming the file, the key and what is allowed
    3   trial failed (recorded in its status.json)
    75  another live process is running the trial (EX_TEMPFAIL: try later)
    76  stopped on request (SIGUSR1: a time limit ahead) after a mid-epoch checkpoint; run again to resume
    130 interrupted (Ctrl-C); 143 stopped by SIGTERM (the trial recorded itself as interrupted)

A `UserError` is a mistake the user can fix and prints as one line; anything else is a bug and
keeps its traceback. SIGTERM (a launcher stopping its workers, SLURM preempting a job) is turned
into SystemExit, so the trial's attempt records itself as interrupted before the process ends.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from trainer.errors import Checkpointed, UserError
from trainer.lock import TrialBusy

EXIT_DONE, EXIT_UNFINISHED, EXIT_USER, EXIT_FAILED, EXIT_BUSY, EXIT_CHECKPOINTED = 0, 1, 2, 3, 75, 76
EXIT_INTERRUPTED, EXIT_SIGTERM = 130, 128 + signal.SIGTERM


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_SIGTERM)


def command(body: Callable[[], int]) -> int:
    """Run a command's body: a user mistake is one line and exit 2, a busy trial exit 75, Ctrl-C 130."""
    previous = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
    try:
        return body()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER
    except TrialBusy as err:
        print(f"busy: {err}", file=sys.stderr)
        return EXIT_BUSY
    except Checkpointed as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return EXIT_CHECKPOINTED
    except UsageExit:
        return EXIT_USER  # the parser printed its one line already
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `... | head` closed our stdout: not an error of ours. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_DONE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class UsageExit(SystemExit):
    """A command-line mistake, already printed: exits 2 on its own, returns 2 inside `command`."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line (`error: python -m x: ... (see --help)`), exit code 2, like every
    other user mistake: no usage block. It exits itself, so it works before a command's wrapper runs."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message[:200]} (see --help)", file=sys.stderr)
        raise UsageExit(EXIT_USER)


def cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """`command` for a main(argv) function: what every `python -m ...` of the project runs."""
    return command(lambda: main(argv))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
