"""sbatch without its own retry loop: `python sbatch_once.py REAL_SBATCH ARGS...` (standard library only).

When the controller answers EAGAIN (MaxJobCount reached: "Slurm temporarily unable to accept
job, sleeping and retrying") or "job queue full", sbatch sleeps 1, 2, ... 15 s between 15 more
tries before it gives up: two minutes per refused array, and the launcher's halving tries
several arrays in a row. SLURM 22.05 has no option or variable for that loop, so this stands in
for sbatch (the launcher puts it first on PATH while submitit submits): it runs the real sbatch,
and at its first "sleeping and retrying" line (printed just before the first 1 s sleep, when no
request is in flight) kills it and fails at once with SLURM's final refusal. The launcher then
tops up later, as room frees, instead of sbatch.

The kill can only miss the sleep if this process is slower than that second to read the line;
then the retry may have created the job without anyone learning its id. Such a job is found by
its script (squeue's command column: the path submitit wrote, a new uuid for each submission)
and cancelled, so no trial ever runs under a job the launcher does not know.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

SUBMITIT_SCRIPT = re.compile(r"\.submission_file_[0-9a-f]{32}\.sh")  # submitit's name for a submission's script, new for each
RETRYING = "sleeping and retrying"  # sbatch's line before its first sleep (EAGAIN, job queue full)
REFUSED = "sbatch: error: Batch job submission failed: Resource temporarily unavailable (sbatch stopped before its retries)"


def run(sbatch: str, args: list[str]) -> int:
    with subprocess.Popen([sbatch, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        said = []
        for line in proc.stderr:
            said.append(line)
            if RETRYING in line:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                sys.stderr.write("".join(said) + REFUSED + "\n")
                jobs, error = cancel_orphans([args[-1]] if args else [])
                done = f"not cancelled ({error})" if error else "cancelled"
                for job in jobs:
                    sys.stderr.write(f"sbatch: job {job} went out as sbatch was stopped; {done}\n")
                return 1
        out = proc.stdout.read()
        code = proc.wait()
    sys.stdout.write(out)
    sys.stderr.write("".join(said))
    return code


def cancel_orphans(scripts: list[str]) -> tuple[list[str], str | None]:
    """Cancel the jobs submitted from `scripts` that nobody learned the ids of; (their ids, scancel's error or None).

    Here: the retry the kill came too late for. In the launcher: a job sbatch took before
    submitit failed to write its files. Only scripts submitit wrote (`.submission_file_<uuid4
    hex>.sh`, a new name for each submission): no other job can have been submitted from them.
    """
    wanted = {os.path.abspath(s) for s in scripts if SUBMITIT_SCRIPT.fullmatch(os.path.basename(s))}
    if not wanted:
        return [], None
    try:
        out = subprocess.run(["squeue", "--me", "--noheader", "--format", "%F %o"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"squeue: {err}"
    jobs = {job for job, _, command in (line.strip().partition(" ") for line in out.stdout.splitlines()) if command.strip() in wanted}
    found = sorted((j for j in jobs if j.isdigit()), key=int)
    return found, scancel(found)


GONE = ("Invalid job id", "already completing or completed", "already finished")  # SLURM's words for a job no longer queued


def scancel(jobs: list[str], timeout_s: float = 60) -> str | None:
    """`scancel` the jobs in one call; None when each is cancelled or already gone, else what went wrong (one line).

    The one place the project runs scancel: the launcher (a held array it must not leave behind),
    sbatch_once (a retry that went through) and orchestrator.cancel.
    """
    if not jobs:
        return None
    try:
        out = subprocess.run(["scancel", *jobs], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"scancel: {err}"
    if out.returncode == 0:
        return None
    # One line per job it could not cancel; a job that left the queue meanwhile needs no cancel.
    said = (out.stderr or out.stdout).strip()
    errors = [line.strip() for line in said.splitlines() if line.strip() and not any(w in line for w in GONE)]
    if said and not errors:
        return None
    return f"scancel: {errors[-1] if errors else f'failed (exit code {out.returncode})'}"


# ---- in the launcher: this script first on PATH while submitit submits ---------------------------
_WRAPPER_DIR: list[str] = []  # the folder holding the `sbatch` of on_path, made once per process ("" if it cannot run)


@contextlib.contextmanager
def on_path() -> Iterator[None]:
    """While submitit submits, `sbatch` on PATH is this script in front of the real one (the module docstring says why).

    submitit runs the bare command `sbatch` (its array submissions through an executor of its own
    making, so a subclass cannot change the command); PATH is the one hook it offers.
    """
    real = shutil.which("sbatch")
    if real is not None and not _WRAPPER_DIR:
        _WRAPPER_DIR.append(_write_wrapper(real))
    if real is None or not _WRAPPER_DIR[0]:
        yield  # no sbatch: submitit's own error names it; no wrapper: sbatch's own retries apply
        return
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{_WRAPPER_DIR[0]}{os.pathsep}{path}"
    try:
        yield
    finally:
        os.environ["PATH"] = path


_OWN_RETRIES = "each refusal by a full controller costs sbatch's own 2 minutes of retries"


def _write_wrapper(real: str) -> str:
    """A temporary folder with an `sbatch` that runs sbatch_once.py in front of `real`; "" where none can run."""
    try:
        folder = tempfile.mkdtemp(prefix="sweep-sbatch-")
        atexit.register(shutil.rmtree, folder, True)
        script = Path(folder) / "sbatch"
        once = Path(__file__)
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(once))} {shlex.quote(real)} "$@"\n')
        script.chmod(0o755)
    except OSError as err:
        print(f"slurm: cannot write a wrapper for sbatch ({err}); {_OWN_RETRIES}", file=sys.stderr)
        return ""
    if not os.access(script, os.X_OK):  # a temporary folder mounted noexec (Linux's access() says so)
        print(f"slurm: {folder} does not allow running programs; {_OWN_RETRIES}", file=sys.stderr)
        return ""
    return folder


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
