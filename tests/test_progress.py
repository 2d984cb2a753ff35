"""The launcher's progress line counts epochs from the trials' status.json, between worker events."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest

from orchestrator import progress as P
from orchestrator.sweep import main as sweep_main
from trainer.cli import cli

EPOCHS_RE = re.compile(r"(\d+)/(\d+) done, (\d+) failed, (\d+) running, epochs (\d+)/(\d+)")


def fake_trial(root: Path, name: str, epochs: int, state: str, epoch: int | None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"epochs": epochs}))
    (folder / "status.json").write_text(json.dumps({"state": state, "epoch": epoch}))
    return folder


def set_epoch(folder: Path, state: str, epoch: int) -> None:
    (folder / "status.json").write_text(json.dumps({"state": state, "epoch": epoch}))


def test_epochs_are_counted_from_status_and_eta_follows_the_rate(tmp_path: Path) -> None:
    a = fake_trial(tmp_path, "a", 10, "running", 2)
    b = fake_trial(tmp_path, "b", 10, "pending", None)
    c = fake_trial(tmp_path, "c", 10, "failed", 3)  # its 7 epochs left never run: not in the ETA
    d = fake_trial(tmp_path, "d", 10, "done", 10)
    out = io.StringIO()
    p = P.Progress(4, "local", stream=out, folders=[a, b, c, d])
    p.tick()
    assert "1/4 done, 1 failed" in out.getvalue() and "epochs 15/33" in out.getvalue() and "ETA --:--" in out.getvalue()
    p.tick()
    assert out.getvalue().count("\n") == 1  # into a file: a line only when the count moved
    set_epoch(a, "running", 4)
    p.tick()
    set_epoch(b, "running", 2)
    p.tick()
    assert p.eta_s() is not None and p.eta_s() > 0  # rate measured over the epochs since the first one seen
    set_epoch(a, "done", 10)
    set_epoch(b, "done", 10)
    p.tick()
    last = out.getvalue().splitlines()[-1]
    assert "3/4 done, 1 failed" in last and "epochs 33/33" in last and "ETA" not in last


def test_ticking_redraws_without_events(tmp_path: Path) -> None:
    a = fake_trial(tmp_path, "a", 3, "running", 0)
    out = io.StringIO()
    p = P.Progress(1, "slurm", stream=out, folders=[a], every_s=0.05)
    with p.ticking():
        set_epoch(a, "running", 1)
        deadline = time.monotonic() + 30
        while "epochs 1/3" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "epochs 1/3" in out.getvalue()


class Recorder(io.StringIO):
    """stderr for the launcher: every progress line, with the moment it was written."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def write(self, s: str) -> int:
        self.lines += [(time.monotonic(), line) for line in s.splitlines() if line]
        return super().write(s)


@pytest.mark.slow
def test_bar_moves_with_the_epochs_of_one_fused_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digits main job's symptom, small: 2 trials in one fused group (one worker); the bar shows each epoch."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "name: tiny\nfixed: {model: resnet20, dataset: digits, epochs: 2, batch_size: 256}\nsweep: {alpha: [-5, 0], seed: [0]}\n"
    )
    monkeypatch.setattr(P, "EVERY_S", 0.2)
    err = Recorder()
    monkeypatch.setattr("sys.stderr", err)
    assert cli(sweep_main, ["--grid", str(grid), "--results", str(tmp_path / "results")]) == 0
    seen = [tuple(int(x) for x in m.groups()) for _, line in err.lines if (m := EPOCHS_RE.search(line))]
    assert seen, err.getvalue()
    # Epochs move while the one worker is still running: every epoch's end shows before the group ends.
    during = {s[4] for s in seen if s[0] == 0 and s[3] == 1}
    assert 2 in during, seen
    assert seen[-1][:2] == (2, 2) and seen[-1][4:] == (4, 4)
    counts = [s[4] for s in seen]
    assert counts == sorted(counts)
