"""The correctness gate of fused training (trainer.fused): K trials in one grouped network train as
K separate trials do (trainer.run's recipe: torch.manual_seed(seed); build_model; SGD; train_epoch).

Why teacher-forced steps and not two free-running trajectories: digits images have constant
backgrounds, so many BatchNorm outputs tie at exactly the channel mean; a grouped and a dense
convolution sum in different orders, the rounding puts such a tie on the other side of the next
ReLU, and that flips a gradient term (~1e-3) after which the two runs drift apart like any two
runs of a chaotic system (even the separate run is only reproducible because it is bitwise
deterministic). So the gate checks the maths of every step of a 3-epoch run from the *same*
state (weights, BatchNorm buffers, momentum), to float32 rounding, plus forward and evaluation
to rounding, plus that one trial's alpha never reaches another trial's numbers (bitwise).

CPU, float32, OMP_NUM_THREADS=1 (set in conftest).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from trainer.data import load_dataset
from trainer.fused import FusedResNet20, fused_evaluate, fused_train_epoch
from trainer.loop import evaluate, train_epoch
from trainer.models import build_model
from trainer.selectivity import batch_selectivity, batched_selectivity

CPU = torch.device("cpu")
SEEDS, ALPHAS, ONSETS = (0, 1, 2), (0.0, -10.0, 5.0), (0, 0, 1)
LR, MOMENTUM, WD, BATCH, EPOCHS = 0.1, 0.9, 5e-4, 128, 3


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", "./data", CPU)


def separate(seed: int):
    torch.manual_seed(seed)  # as trainer.trial.run_trial builds a trial
    model = build_model("resnet20", 10, 1)
    return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)


def alpha_at(k: int, epoch: int) -> float:
    return ALPHAS[k] if epoch >= ONSETS[k] else 0.0


def assert_state_close(fused: FusedResNet20, k: int, model: torch.nn.Module, atol: float, rtol: float = 1e-4) -> None:
    got, want = fused.state_for(k), model.state_dict()
    assert set(got) == set(want)
    for name, w in want.items():
        torch.testing.assert_close(got[name].to(w.dtype), w, atol=atol, rtol=rtol, msg=lambda m, name=name: f"model {k} {name}: {m}")


def test_init_and_state_roundtrip() -> None:
    models = [separate(s)[0] for s in SEEDS]
    rng_before = torch.random.get_rng_state()
    fused = FusedResNet20.from_models(models)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # fusing does not move the RNG
    for k, m in enumerate(models):
        assert_state_close(fused, k, m, atol=0, rtol=0)
    for k, m in enumerate(fused.to_models()):
        for name, t in m.state_dict().items():
            assert torch.equal(t, models[k].state_dict()[name])


def test_forward_and_selectivity_match_separate(data) -> None:
    models = [separate(s)[0] for s in SEEDS]
    fused = FusedResNet20.from_models(models)
    batches = [next(iter(data.train_batches(0, s, BATCH, True))) for s in SEEDS]
    x = torch.cat([b[0] for b in batches], dim=1)
    y = torch.stack([b[1] for b in batches])
    logits, feats = fused(x, capture=True)
    si = batched_selectivity(feats, y, 10)
    for k, m in enumerate(models):
        ref_logits, ref_feats = m(batches[k][0], capture=True)
        torch.testing.assert_close(logits[k], ref_logits, atol=1e-5, rtol=1e-5)
        for f, r in zip(feats, ref_feats):
            torch.testing.assert_close(f[k], r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(si[k], batch_selectivity(ref_feats, batches[k][1], 10), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_teacher_forced_steps_match_separate_trials(data) -> None:
    """Every step of 3 epochs: fused step from the separate trials' state == their own steps."""
    runs = [separate(s) for s in SEEDS]
    fused = FusedResNet20.from_models([m for m, _ in runs])
    fopt = torch.optim.SGD(fused.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    worst = 0.0
    for e in range(EPOCHS):
        alphas = [alpha_at(k, e) for k in range(3)]
        sep_iters = [iter(data.train_batches(e, s, BATCH, True)) for s in SEEDS]
        fused_iters = [iter(data.train_batches(e, s, BATCH, True)) for s in SEEDS]
        for _ in range(data.n_train // BATCH):
            for k, (m, opt) in enumerate(runs):  # the fused network takes the separate trials' state
                fused.load_state_for(k, m.state_dict())
                fused.load_optimizer_state_for(fopt, k, opt.state_dict())
            fstats = fused_train_epoch(fused, fopt, [itertools.islice(it, 1) for it in fused_iters], alphas, 10, CPU)
            for k, (m, opt) in enumerate(runs):
                s = train_epoch(m, opt, itertools.islice(sep_iters[k], 1), alphas[k], 10, CPU)
                assert fstats[k].loss == pytest.approx(s.loss, rel=1e-5, abs=1e-6)
                assert fstats[k].acc == s.acc
                assert (fstats[k].selectivity is None) == (s.selectivity is None)
                if s.selectivity is not None:
                    assert fstats[k].selectivity == pytest.approx(s.selectivity, rel=1e-4, abs=1e-6)
                assert_state_close(fused, k, m, atol=5e-5)
                got = fused.optimizer_state_for(fopt, k)["state"]
                for idx, st in opt.state_dict()["state"].items():
                    diff = (got[idx]["momentum_buffer"] - st["momentum_buffer"]).abs().max().item()
                    worst = max(worst, diff)
    assert worst < 5e-4, worst  # momentum buffers carry the raw gradient (lr not applied)
    # The end state evaluates alike: loss, accuracy, every unit's CSI and eval-mode logits.
    for k, (m, _) in enumerate(runs):
        fused.load_state_for(k, m.state_dict())
    fev = fused_evaluate(fused, data, 10, CPU, 256)
    for k, (m, _) in enumerate(runs):
        ev = evaluate(m, data.test_batches(256), 10, CPU)
        assert fev[k].acc == ev.acc
        assert fev[k].loss == pytest.approx(ev.loss, rel=1e-5)
        for a, b in zip(fev[k].layers, ev.layers):
            torch.testing.assert_close(a.csi, b.csi, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(a.mu_max, b.mu_max, atol=1e-5, rtol=1e-4)
    x, _ = next(iter(data.test_batches(256)))
    fused.eval()
    logits, _ = fused(x.repeat(1, 3, 1, 1))
    for k, (m, _) in enumerate(runs):
        m.eval()
        torch.testing.assert_close(logits[k], m(x)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_free_running_fused_run_is_separate_trials_untethered(data) -> None:
    """One alpha acts only on its own trial: changing model 1's alpha leaves models 0 and 2 bitwise equal."""

    def run(alphas: tuple[float, ...]):
        fused = FusedResNet20.from_models([separate(s)[0] for s in SEEDS])
        opt = torch.optim.SGD(fused.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        stats = []
        for e in range(2):
            a = [alphas[k] if e >= ONSETS[k] else 0.0 for k in range(3)]
            stats.append(fused_train_epoch(fused, opt, [data.train_batches(e, s, BATCH, True) for s in SEEDS], a, 10, CPU))
        return fused, stats

    f1, s1 = run(ALPHAS)
    f2, s2 = run((ALPHAS[0], 20.0, ALPHAS[2]))
    for k in (0, 2):
        for name, t in f1.state_for(k).items():
            assert torch.equal(t, f2.state_for(k)[name]), (k, name)
        assert [s[k].loss for s in s1] == [s[k].loss for s in s2]
    assert not torch.equal(f1.state_for(1)["head.weight"], f2.state_for(1)["head.weight"])


@pytest.mark.slow
def test_speed_benchmark_runs_ci_sized(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m benchmarks.speed --small` in its smallest form: every figure it promises is printed."""
    from benchmarks import speed as bench_speed

    assert bench_speed.main(["--small", "--k", "2", "--steps", "1", "--rounds", "1", "--n-train", "256"]) == 0
    out = capsys.readouterr().out
    needles = ("loader (plain DataLoader)", "single, alpha 0", "single, alpha -10", "fused K=2", "img/s aggregate", "regularizer overhead",
               "evaluation share of an epoch", "targets:", "projected hours on this cpu for grids/cifar10.yaml (75 trials")  # fmt: skip
    for needle in needles:
        assert needle in out, needle
    with pytest.raises(SystemExit):
        bench_speed.main(["--alpha", "0"])
