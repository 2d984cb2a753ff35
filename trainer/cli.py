"""Every command's exit codes and its one wrapper (trainer.run/group/ablate, orchestrator.*).

    0   done (trainer) / finished with every trial done (launchers)
    1   a launcher finished but some trials failed or are not finished (see its summary)
    2   user mistake: one line on stderr naming the file, the key and what is allowed
    3   trial failed (recorded in its status.json)
    75  another live process is running the trial (EX_TEMPFAIL: try later)
    76  stopped on request (SIGUSR1: a time limit ahead) after a mid-epoch checkpoint; run again to resume
    130 interrupted (Ctrl-C); 143 stopped by SIGTERM (the trial recorded itself as interrupted)
    129, 138, 140 stopped by SIGHUP, SIGUSR1, SIGUSR2 (128 + the signal), where the command has no
        use of its own for them (trainer.run and trainer.group take USR1 and USR2 as a time limit
        ahead: exit 76; the local launcher passes them on to its workers: docs/reliability.md)

A `UserError` is a mistake the user can fix and prints as one line; anything else is a bug and
keeps its traceback. SIGTERM (a launcher stopping its workers, SLURM preempting a job), SIGHUP
(a closed terminal), SIGUSR1 and SIGUSR2 are turned into SystemExit(128 + signal), so the trial's
attempt records itself as interrupted, and a launcher stops and waits for its workers, before the
process ends: no signal a user or a scheduler sends kills a command silently.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

from trainer.errors import Checkpointed, UserError
from trainer.lock import TrialBusy

EXIT_DONE, EXIT_UNFINISHED, EXIT_USER, EXIT_FAILED, EXIT_BUSY, EXIT_CHECKPOINTED = 0, 1, 2, 3, 75, 76
EXIT_INTERRUPTED, EXIT_SIGTERM = 130, 128 + signal.SIGTERM
# Signals that stop a command through SystemExit(128 + signal) (Ctrl-C is KeyboardInterrupt already).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_worker(code: int) -> NoReturn:
    """End a worker process (trainer.run, trainer.group) with `code`.

    A tracker left behind at its bound (trainer.trackers) can hold the exit in its package's atexit
    hooks: W&B waited ~80 s more for a server that never answered, past the 30 s its docs promise
    (and past a SLURM warning's window). Then stdio is flushed and the process ends without them;
    every result file is on disk already (written atomically, fsynced).
    """
    trackers = sys.modules.get("trainer.trackers")
    if trackers is not None and trackers.LEFT_BEHIND.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def command(body: Callable[[], int]) -> int:
    """Run a command's body: a user mistake is one line and exit 2, a busy trial exit 75, Ctrl-C 130."""
    # A signal ignored on purpose (nohup ignores SIGHUP; a SLURM task starts its workers with USR2 ignored) stays ignored.
    mine = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN] if _main_thread() else []
    previous = {sig: signal.signal(sig, _sigterm) for sig in mine}
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# Held (delivered a moment later) while status.json records a start or an end.
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class Held:
    """The handlers a hold replaced, and the signals that came meanwhile."""

    previous: dict[int, Any] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)


def hold_signals() -> Held:
    """Hold the stop signals: until `release_signals`, one that comes is noted, not acted on.

    Python-level handlers, not the thread's signal mask: the kernel hands a process signal to any
    thread that does not block it (torch's, a test runner's), and Python acts on it in the main
    thread all the same. Nothing is held outside the main thread (handlers cannot be set there).
    """
    held = Held()
    if _main_thread():
        for sig in HELD_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                held.previous[sig] = signal.signal(sig, lambda signum, frame: held.pending.append(signum))
    return held


def release_signals(held: Held) -> None:
    """Put the handlers back and deliver what came meanwhile (its handler may raise here)."""
    for sig, handler in held.previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    for sig in dict.fromkeys(held.pending):
        signal.raise_signal(sig)


class UsageExit(SystemExit):
    """A command-line mistake, already printed: exits 2 on its own, returns 2 inside `command`."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line (`error: python -m x: ... (see --help)`), exit code 2, like every
    other user mistake: no usage block. It exits itself, so it works before a command's wrapper runs."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message[:200]} (see --help)", file=sys.stderr)
        raise UsageExit(EXIT_USER)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # argparse's own signature
        argv = sys.argv[1:] if args is None else list(args)
        self._refuse_repeats(argv)
        return super().parse_known_args(argv, namespace)

    def _refuse_repeats(self, argv: list[str]) -> None:
        """An option that takes one value, given twice: argparse keeps the last without a word (two
        --grid ran one grid, two --cluster the last profile's engine); a mistake, said in one line."""
        single = {o: a for a in self._actions if type(a) is argparse._StoreAction for o in a.option_strings}
        seen: dict[argparse.Action, str] = {}
        for i, token in enumerate(argv):
            if token == "--":
                break
            option, eq, value = token.partition("=")
            action = single.get(option) if token.startswith("-") else None
            if action is None:
                continue
            value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            if action in seen:
                self.error(f"{option} given twice ({seen[action]!r} and {value!r}); give it once")
            seen[action] = value


def cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """`command` for a main(argv) function: what every `python -m ...` of the project runs."""
    return command(lambda: main(argv))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
