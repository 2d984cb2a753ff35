"""Random ablation with a new mask every batch (Ranadive et al.'s ablations.py) beside fixed masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trainer.analysis.ablation import AblationPlan, ablated_per_batch, ablation_rows, heldout_accuracy
from trainer.analysis.ablation_plan import ablation_plan_of
from trainer.data import load_dataset
from trainer.models import build_model
from trainer.spec import SpecError, TrialSpec

CPU = torch.device("cpu")


def test_per_batch_masks_change_between_passes_and_are_seeded() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1).eval()
    x = torch.randn(4, 1, 8, 8)

    def two_passes(seed: int) -> list[torch.Tensor]:
        with ablated_per_batch(model, {0: 16, 1: 16, 2: 16}, 8, np.random.default_rng(seed)), torch.no_grad():
            return [model(x)[0] for _ in range(2)]

    a, b = two_passes(1)
    assert not torch.equal(a, b)  # a new mask for the second batch
    assert all(torch.equal(p, q) for p, q in zip(two_passes(1), (a, b)))  # the same seed draws the same masks
    with torch.no_grad():
        assert not torch.equal(model(x)[0], a)  # and the hooks are gone afterwards


@pytest.mark.slow
def test_rows_hold_both_random_kinds() -> None:
    digits = load_dataset("digits", "./data", CPU)
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1)
    csi = {name: np.linspace(0, 1, w) for name, w in zip(model.block_names, model.units_per_layer())}
    plan = AblationPlan((0.5,), draws=2, random_masks="both")
    rows = pd.DataFrame(ablation_rows(model, digits, csi, 1, 0, plan, heldout_accuracy(model, digits, 64, CPU), 64, CPU))
    assert list(dict.fromkeys(rows.selection)) == ["topk", "random", "random_batch"]
    assert len(rows) == 3 * (1 + 2 + 2)
    fixed, batch = (rows[rows.selection == s].accuracy.to_numpy() for s in ("random", "random_batch"))
    assert not np.array_equal(fixed, batch)


def test_the_field_picks_the_masks() -> None:
    spec = TrialSpec(ablation_fractions=(0.5,), ablation_random_masks="per_batch")
    assert ablation_plan_of(spec).selections() == ("topk", "random_batch")
    assert AblationPlan().selections() == ("topk", "random")
    with pytest.raises(SpecError, match="field 'ablation_random_masks' is 'each'; allowed: fixed, per_batch, both"):
        TrialSpec(ablation_random_masks="each")
    assert TrialSpec(ablation_random_masks="both").trial_id == TrialSpec().trial_id
