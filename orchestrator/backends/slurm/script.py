"""The sbatch script of a sweep's job arrays, as submitit writes it: its folder, interpreter and text.

    render_sbatch(profile, sweep, folder, n_tasks)   the `*_submission.sh` submitit will write (pure)

Used by the launcher (submission and --dry-run), its preflight (`sbatch --test-only`) and the
golden-file tests. The parameters themselves are sbatch.py's, pure and submitit-free.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from submitit.slurm.slurm import _make_sbatch_string

from orchestrator.backends.slurm.sbatch import sbatch_parameters
from orchestrator.profiles import SlurmProfile
from trainer.errors import UserError


def log_folder(profile: SlurmProfile, sweep: Path) -> Path:
    """submitit's folder (pickles, logs, scripts); `%j` becomes each job's id."""
    folder = Path(profile.log_dir).expanduser() if profile.log_dir else sweep / "slurm" / "%j"  # ~: not a folder named "~" here
    return folder.absolute()


def python_command(profile: SlurmProfile) -> str:
    """The interpreter the jobs run: the profile's (a shell word or command), else the launcher's."""
    return profile.python if profile.python is not None else shlex.quote(sys.executable)


def render_sbatch(
    profile: SlurmProfile, sweep: str | Path, folder: Path, n_tasks: int, python: str | None = None, dependency: str | None = None
) -> str:
    """The sbatch script submitit writes for an array of `n_tasks` tasks (a plain job for one).

    Pure: the same text as the submitted `*_submission.sh`, for review and the golden-file tests.
    """
    check_one_line(str(folder), "log folder")
    command = " ".join([python or python_command(profile), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    map_count = n_tasks if n_tasks > 1 else None
    params = sbatch_parameters(profile, sweep)
    if dependency:
        params["dependency"] = dependency
    return _make_sbatch_string(command=command, folder=folder, map_count=map_count, **params)


def check_one_line(value: str, what: str) -> None:
    # A newline would end an `#SBATCH` comment line and turn the rest into a shell command.
    if "\n" in value or "\r" in value:
        raise UserError(f"{what} {value!r} contains a line break; it goes into an sbatch script")
