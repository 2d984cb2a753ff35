"""The optional torch.compile path (resource field `compile`): same training, compiled once per
process and shape, reused by the next trial. Slow on CPU (the first compilation takes about a
minute on 2 cores), hence marked slow; the GPU is where it pays."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from trainer import results as R
from trainer.spec import TrialSpec
from trainer.trial import run_trial

pytestmark = pytest.mark.slow


def test_compiled_trials_train_alike_and_compile_once(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    eager = TrialSpec(sweep="compile", epochs=1, alpha=-1.0, seed=0, device="cpu", batch_size=256)
    compiled = TrialSpec.from_dict({**eager.to_dict(), "compile": True})
    assert compiled.trial_id == eager.trial_id  # a resource setting: the same trial
    assert run_trial(eager, tmp_path / "eager") == "done"
    assert run_trial(compiled, tmp_path / "compiled") == "done"
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    a, b = pd.read_parquet(tmp_path / "eager" / R.EPOCHS), pd.read_parquet(tmp_path / "compiled" / R.EPOCHS)
    for col in ("test_loss", "test_acc", "csi_mean"):  # the initialised network: compiled kernels only round differently
        assert b[col][0] == pytest.approx(a[col][0], rel=1e-4, abs=1e-5), col
    for col in ("train_loss", "csi_mean"):  # training then drifts by rounding, as any two runs would
        assert b[col][1] == pytest.approx(a[col][1], rel=0.05), col
    # After one epoch the digits network is still in its transient (test loss 4, above chance's 2.3),
    # where the held-out loss amplifies rounding: 4.09 eager vs 4.41 compiled with torch 2.14.1 on CPU
    # (train loss 0.2% apart); one epoch later the two are 3.5% apart. Bound it at 15%.
    assert b["test_loss"][1] == pytest.approx(a["test_loss"][1], rel=0.15)
    assert json.loads((tmp_path / "compiled" / R.SPEC).read_text())["compile"] is True
    # The next trial (another seed and alpha, same shapes) reuses the compiled graphs.
    other = TrialSpec.from_dict({**compiled.to_dict(), "seed": 1, "alpha": -3.0})
    assert run_trial(other, tmp_path / "other") == "done"
    assert counters["stats"]["unique_graphs"] == graphs
