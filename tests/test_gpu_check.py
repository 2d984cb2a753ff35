"""`python -m benchmarks.gpu`, the GPU check: its smoke form runs every row on CPU, rows are isolated,
the fused and separate steps are the same training, and it refuses to run without a GPU in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.gpu.cli import main
from benchmarks.gpu.report import Report, Result, Row
from benchmarks.gpu.steps import fused_step, graph_safe_selectivity, single_step
from trainer.fused import FusedResNet20
from trainer.loop import optimizer_for
from trainer.models import build_model
from trainer.selectivity import batched_selectivity
from trainer.spec import TrialSpec

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
# Every row of the full check, in its order (K = 1, 2 in the smoke form; 1, 4, 8, 16, 32 on a GPU).
ROWS = [
    "ResNet-20 x1 separate, CUDA graphs",
    "ResNet-20 fused K=1, CUDA graph",
    "ResNet-20 x2 separate, CUDA graphs",
    "ResNet-20 fused K=2, CUDA graph",
    "ResNet-20 x2 separate, CUDA graphs, plain CE",
    "ResNet-20 fused K=2, CUDA graph, plain CE",
    "ResNet-20 x2 separate, eager",
    "ResNet-20 fused K=2, eager",
    "ResNet-20 fused K=2, trainer.fused",
    "ResNet-20 single trial, trainer.loop",
    "ResNet-50 train, synthetic tensors",
    "ResNet-50 train, loader portable (CPU decode)",
    "ResNet-50 train, loader nvjpeg (GPU decode, torchvision)",
    "ResNet-50 train, loader DALI",
    "ResNet-50 evaluation, val decoded once",
    "ResNet-20 fused K=2, trainer.fused, torch.compile",
    "ResNet-50 train, synthetic tensors, torch.compile",
]
# The check as the borrowed machine runs it: no Ray, no submitit, no DALI importable.
BLOCKED = (
    "import sys, runpy; sys.modules.update(dict.fromkeys(('ray', 'submitit', 'nvidia.dali')));"  # None: import fails
    "sys.argv = ['benchmarks.gpu', *sys.argv[1:]]; runpy.run_module('benchmarks.gpu', run_name='__main__')"
)


@pytest.mark.slow  # the whole smoke form: ~25 s of CPU (~80 s wall at load 7 on 2 cores)
def test_small_form_runs_every_row_without_ray_submitit_or_dali(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", BLOCKED, "--small", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**_env(), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "gpu-check.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert [r["name"] for r in data["rows"]] == ROWS  # every row, in value order, none skipped
    assert data["header"]["state"] == "complete" and data["header"]["mode"].startswith("small")
    for name, r in rows.items():
        if name.endswith("loader DALI"):
            assert r["status"] == "not installed", r  # blocked here: the row says so and the check goes on
            continue
        assert r["status"] == "ok" and r["images_per_s"] > 0, r
    for name in ROWS[:6]:
        assert "no CUDA graphs on CPU" in rows[name]["note"]
    assert all("torch.compile is not tried on CPU" in rows[n]["note"] for n in ROWS[-2:])
    assert (
        rows["ResNet-20 fused K=2, CUDA graph"]["ratio"] is not None
        and "fused / separate" in rows["ResNet-20 fused K=2, CUDA graph"]["note"]
    )
    for loader in ("portable", "nvjpeg"):
        r = next(r for n, r in rows.items() if loader in n)
        assert r["ratio"] is not None and "stall" in r["note"]
    md = (out / "gpu-check.md").read_text()
    assert all(f"| {name} |" in md for name in ROWS) and "driver" in md and "cuDNN" in md and "torchvision" in md
    assert md in done.stdout  # the table is printed too


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("args", [["--device", "cuda"], ["--device", "auto"], []])
def test_without_cuda_it_refuses_in_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "CUDA" in err and "nothing" in err
    assert not out.exists()


@pytest.mark.slow  # ~1.5 s on a busy 2-core machine (a row runs into its 0.3 s cap)
def test_a_failing_row_is_recorded_and_the_next_still_runs(tmp_path: Path) -> None:
    """An error (an OOM, say) and a row over its cap are recorded; the files are rewritten after each row."""
    seen: list[list[str]] = []

    def oom() -> Result:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail")

    def slow() -> Result:
        while True:
            time.sleep(0.01)

    def ok() -> Result:
        seen.append([r["name"] for r in json.loads((tmp_path / "gpu-check.json").read_text())["rows"]])
        return Result(123.0, "fine")

    report = Report(tmp_path, {"mode": "test"}, CPU, budget_s=None, start=time.perf_counter())
    report.run([Row("a", "oom", 5, oom), Row("b", "slow", 0.3, slow), Row("c", "ok", 5, ok)])
    rows = json.loads((tmp_path / "gpu-check.json").read_text())["rows"]
    assert [(r["name"], r["status"]) for r in rows] == [("oom", "error"), ("slow", "error"), ("ok", "ok")]
    assert "CUDA out of memory" in rows[0]["note"] and "more detail" not in rows[0]["note"]
    assert "time cap" in rows[1]["note"] and report.results == {"c": 123.0}
    assert seen == [["oom", "slow"]]  # written before the last row ran
    assert "| ok | 123 |" in (tmp_path / "gpu-check.md").read_text()


def test_budget_spent_rows_say_so(tmp_path: Path) -> None:
    report = Report(tmp_path, {"mode": "test"}, CPU, budget_s=0.0, start=time.perf_counter())
    report.run([Row("a", "late", 5, lambda: Result(1.0))])
    assert report.rows[0].status == "not run" and "budget" in report.rows[0].note


def test_graph_safe_selectivity_is_batched_selectivity() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (3, 16), generator=g)
    labels[2] = 1  # one model's batch holds a single class: SI 0 for it, as batched_selectivity(strict=False)
    feats = [torch.rand((3, 16, u), generator=g) for u in (5, 7)]
    got = graph_safe_selectivity(feats, labels, 4)
    want = batched_selectivity(feats, labels, 4, strict=False)
    assert torch.allclose(got, want, atol=1e-6) and float(got[2]) == 0.0


@pytest.mark.slow  # ~2 s on a busy 2-core machine
def test_fused_and_separate_steps_are_the_same_training() -> None:
    """Like for like: one fused step of K models moves each model's weights as its separate step does."""
    k, b = 2, 8
    models = []
    for i in range(k):
        torch.manual_seed(i)
        models.append(build_model("resnet20", 10, 3))
    fused = FusedResNet20.from_models(models)
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn((k, b, 3, 32, 32), generator=g), torch.randint(0, 10, (k, b), generator=g)
    spec = TrialSpec()
    fo = optimizer_for(fused.parameters(), spec)
    fused_step(fused, fo, xs.transpose(0, 1).reshape(b, k * 3, 32, 32), ys, -1.0, 10)()
    for i, m in enumerate(models):
        single_step(m, optimizer_for(m.parameters(), spec), xs[i], ys[i], -1.0, 10)()
        mine, theirs = m.state_dict(), fused.state_for(i)
        assert all(torch.allclose(mine[n].float(), theirs[n].float(), atol=1e-5) for n in mine)


def test_out_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "table.md").write_text("old")
    assert main(["--small", "--device", "cpu", "--out", str(tmp_path / "table.md")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "table.md").read_text() == "old"


def test_full_check_plans_every_row_in_value_order_within_six_minutes(tmp_path: Path) -> None:
    """The full form's rows (not run here): graphs first, compile last, and a budget that ends before 6 minutes."""
    from benchmarks.gpu.cli import BUDGET_S, plan_for, rows

    plan = plan_for(False, 16)
    report = Report(tmp_path, {"mode": "test"}, CPU, budget_s=BUDGET_S, start=time.perf_counter())
    names = [r.name for r in rows(plan, CPU, tmp_path, report)]
    ks = [1, 4, 8, 16, 32]
    assert names[: 2 * len(ks)] == [n for k in ks for n in (f"ResNet-20 x{k} separate, CUDA graphs", f"ResNet-20 fused K={k}, CUDA graph")]
    assert names[2 * len(ks) :] == [n.replace("K=2", "K=8").replace("x2 ", "x8 ") for n in ROWS[4:]]
    assert BUDGET_S + 20 <= 360  # + start-up: under 6 minutes of wall time in all
    steps = plan.r50.warmup + plan.r50.steps
    assert plan.r50.train_files * plan.r50.repeat >= steps * plan.r50.batch  # the loader rows' one pass never runs dry
