"""The Ray ports of a job of scripts/ray_in_slurm.sbatch: `python -m orchestrator.backends.ray_ports <job id>`.

Prints the base port P: the head's GCS listens on P and the other fixed Ray ports are P+2 .. P+7
(dashboard agent, runtime env agent, metrics, node manager, object manager). The first candidate
comes from the job id, so two jobs on one node get different ones. Any other process may hold one
of them already (another user's Ray started on its own ports): with the GCS port taken, the job's
head would fail to start while the script's wait reached *that* Ray, and the sweep would run on
someone else's cluster. So the first candidate whose ports this node can all bind is taken (the
script runs on the head node). Another process could still take one between this check and
`ray start`; the head then fails and the job says so.
"""

from __future__ import annotations

import socket
import sys

FIRST, SLOTS, STRIDE = 20000, 2000, 20  # bases 20000, 20020, ..., 59980: above Ray's worker ports (10002-19999)
OFFSETS = (0, 2, 3, 4, 5, 6, 7)
STEP = 37  # prime to SLOTS: the candidates visit every slot once


def free(port: int) -> bool:
    """Can this process bind `port` (TCP, every interface) now?"""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def pick(job_id: int) -> int | None:
    """The job's base port: the first candidate (from its job id) whose ports are all free here; None if none is."""
    for k in range(SLOTS):
        base = FIRST + (job_id + STEP * k) % SLOTS * STRIDE
        if all(free(base + d) for d in OFFSETS):
            return base
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m orchestrator.backends.ray_ports <job id>", file=sys.stderr)
        return 2
    base = pick(int(argv[0]))
    if base is None:
        print(f"no free set of Ray ports in {FIRST}-{FIRST + SLOTS * STRIDE - 1} on this node", file=sys.stderr)
        return 1
    print(base)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
