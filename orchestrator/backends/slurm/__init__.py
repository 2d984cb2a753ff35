"""SLURM backend (submitit job arrays): the only package that imports submitit.

    launcher.py  submit groups as job arrays, skip what is queued, wait (or not), SlurmBackend
    job.py       TrialJob: what an array task runs on its node (workers, requeues, signals)
    sbatch.py    the sbatch parameters and chunking as pure functions (no SLURM needed)

Queued jobs pickled `orchestrator.backends.slurm.TrialJob` by reference: it stays importable here.
"""

from __future__ import annotations

from orchestrator.backends.slurm.job import REQUEUES, TrialJob
from orchestrator.backends.slurm.launcher import SUBMITTED, SlurmBackend, render_sbatch, squeue, submit

__all__ = ["REQUEUES", "SUBMITTED", "SlurmBackend", "TrialJob", "render_sbatch", "squeue", "submit"]
