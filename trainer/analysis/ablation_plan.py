"""Which channels an ablation zeroes and how many passes that costs (trainer.analysis.ablation runs it).

Apart from the measurement so that the GPU-hour estimate of `--dry-run` (orchestrator.estimate)
counts ablation passes without importing torch: that import was most of a 10,000-trial dry run's CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.spec import TrialSpec


@dataclass(frozen=True)
class AblationPlan:
    """Which k channels to zero per stage: fractions of the stage's width, absolute counts, and
    Ranadive et al.'s schedule (`count_steps` (a, b): k in range(0, C/2, a) and range(C/2, C + 1, b)
    for a stage of C channels); `draws` random draws per (epoch, stage, k)."""

    fractions: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    count_steps: tuple[int, int] | None = None
    draws: int = 3
    images: int | None = None  # evaluate on this many test images (the same seeded subset for every trial); None: all
    random_masks: str = "fixed"  # fixed: one mask per draw; per_batch: a new mask every batch; both

    def selections(self) -> tuple[str, ...]:
        """The selections measured: top-k, and random with fixed and/or per-batch masks."""
        randoms = {"fixed": ("random",), "per_batch": ("random_batch",), "both": ("random", "random_batch")}[self.random_masks]
        return ("topk", *randoms)

    def ks(self, width: int) -> list[int]:
        """The distinct k of a stage of `width` channels, ascending (counts above the width are left out)."""
        ks = {round(f * width) for f in self.fractions} | {k for k in self.counts if k <= width}
        if self.count_steps is not None:
            small, large = self.count_steps
            ks |= set(range(0, width // 2, small)) | set(range(width // 2, width + 1, large))
        return sorted(ks)

    def passes(self, widths: Sequence[int]) -> int:
        """Evaluation passes of one checkpoint: k = 0 is the epoch's own evaluation (none; one on a
        subset), a whole stage zeroed is the same network for top-k and every draw (one), any other
        k: top-k + draws."""
        randoms = len(self.selections()) - 1
        ablated = sum(0 if k == 0 else 1 if k == w else 1 + randoms * self.draws for w in widths for k in self.ks(w))
        return ablated + (1 if self.images is not None else 0)

    def subset(self, n_test: int) -> np.ndarray | None:
        """The test images to evaluate on: a fixed seeded draw, the same for every trial (comparable curves)."""
        if self.images is None or self.images >= n_test:
            return None
        return np.sort(np.random.default_rng(0).permutation(n_test)[: self.images])


def ablation_plan_of(spec: TrialSpec) -> AblationPlan:
    """The ablation a trial asks for at its end (its ablation_* fields)."""
    steps = spec.ablation_count_steps
    return AblationPlan(
        fractions=spec.ablation_fractions or (),
        counts=spec.ablation_counts or (),
        count_steps=(steps[0], steps[1]) if steps else None,
        draws=spec.ablation_draws,
        images=spec.ablation_images,
        random_masks=spec.ablation_random_masks,
    )
