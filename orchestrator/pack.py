"""Packing trials into fused groups (trainer.group): what the orchestrator hands each worker.

Trials with equal `TrialSpec.fuse_key()` (they differ only in alpha, onset/offset, seed and
labels) are packed, in plan order, into as few groups of at most K as possible, the groups as
even as can be (17 trials at K = 16 make 9 + 8, not 16 + 1: a lone trial gains nothing). A
trial whose model has no fused form is a group of one, as is one whose last attempt ran out of
device memory (`alone`). K = 1 turns fusing off.

`min_groups` keeps parallel workers busy: the local backend with N worker processes asks for at
least N groups (one fused group uses one process), as long as every group keeps two trials.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from trainer.spec import TrialSpec


def pack(specs: Sequence[TrialSpec], k: int, min_groups: int = 1, alone: Collection[str] = ()) -> list[list[TrialSpec]]:
    """`specs` as fused groups of at most `k`; every spec lands in exactly one group, order kept.

    `alone`: trial ids that train in a group of their own (their last attempt ran out of device
    memory in a group: the same group would again).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    by_key: dict[object, list[TrialSpec]] = {}
    groups: list[list[TrialSpec]] = []
    for spec in specs:
        key = spec.fuse_key()
        if key is None or k == 1 or spec.trial_id in alone:
            groups.append([spec])
        else:
            by_key.setdefault(key, []).append(spec)
    for members in by_key.values():
        n = len(members)
        # Never split off a lone trial to fill a worker: alone it trains beside a throwaway twin.
        count = max(math.ceil(n / k), min(min_groups, max(1, n // 2)))
        size, extra = divmod(n, count)
        start = 0
        for i in range(count):  # the first `extra` groups take one more
            stop = start + size + (i < extra)
            groups.append(members[start:stop])
            start = stop
    return groups
