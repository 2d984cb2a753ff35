"""SLURM backend (submitit job arrays): the only package that imports submitit.

    launcher.py  submit tasks as chained, throttled job arrays (within submit limits), SlurmBackend
    preflight.py the checks before anything is written (commands, partition and its limits, `sbatch --test-only`)
    wait.py      `wait: true`: follow the jobs out of the queue, top up, say why a job cannot start
    script.py    the sbatch script submitit writes (render_sbatch, pure)
    cluster.py   the controller's config (MaxArraySize, MinJobAge); partition.py its partitions' limits
    qos.py       the QOS and association limits a job runs under (sacctmgr), where the site enforces them
    job.py       TrialJob: what an array task runs on its node (a worker per GPU, requeues, signals)
    queue.py     squeue / sacct, and the outcome of jobs that left the queue without one
    sbatch.py    the sbatch parameters and chunking as pure functions (no SLURM needed)
    sbatch_once.py  sbatch without its two-minute retry loop (standard library only), and the one scancel helper
    submit_lock.py  one launcher at a time submits a sweep (a flock on <sweep>/.submit.lock)

Queued jobs pickled `orchestrator.backends.slurm.TrialJob` by reference: it stays importable here.
"""

from __future__ import annotations

from orchestrator.backends.slurm.job import REQUEUES, TrialJob
from orchestrator.backends.slurm.launcher import SlurmBackend, submit
from orchestrator.backends.slurm.queue import SUBMITTED, settle, squeue
from orchestrator.backends.slurm.script import render_sbatch

__all__ = ["REQUEUES", "SUBMITTED", "SlurmBackend", "TrialJob", "render_sbatch", "settle", "squeue", "submit"]
