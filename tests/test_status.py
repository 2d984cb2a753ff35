"""orchestrator.status says which trial is which (the swept fields), why one failed or stopped, and filters and redraws."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.synthetic import write_trial
from orchestrator.grid import load_grid
from orchestrator.status import main as status_main
from trainer import results as R
from trainer.cli import cli

from helpers import imported_by

GRID = "name: st\nfixed: {epochs: 2, batch_size: 256}\nsweep: {alpha: [-30, 0], seed: [0, 2]}\n"


def sweep_with_outcomes(tmp_path: Path) -> tuple[Path, dict[tuple[float, int], str]]:
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    specs = list(load_grid(grid).specs)
    sweep = tmp_path / "results" / "st"
    for spec in specs:
        write_trial(sweep, spec, units=False)
    ids = {(s.alpha, s.seed): s.trial_id for s in specs}
    failed, stopped = sweep / "trials" / ids[(-30.0, 2)], sweep / "trials" / ids[(0.0, 0)]
    for folder, changes in (
        (failed, {"state": "failed", "error": "non-finite training loss (nan) in epoch 2", "log": str(failed / "log.txt")}),
        (stopped, {"state": "interrupted", "last_interruption": "2026-01-01 00:00:00: SIGTERM", "log": str(stopped / "log.txt")}),
    ):
        status = json.loads((folder / R.STATUS).read_text())
        (folder / R.STATUS).write_text(json.dumps({**status, **changes}))
    return sweep, ids


def test_json_and_table_have_the_swept_fields_and_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, ids = sweep_with_outcomes(tmp_path)
    assert cli(status_main, [str(sweep), "--json"]) == 0
    rows = {r["trial_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert {(r["alpha"], r["seed"]) for r in rows.values()} == set(ids)
    assert all(rows[tid]["alpha"] == a and rows[tid]["seed"] == s for (a, s), tid in ids.items())
    assert "epochs" in rows[ids[(0.0, 2)]] and "batch_size" not in rows[ids[(0.0, 2)]]  # only what varies is a column
    failed = rows[ids[(-30.0, 2)]]
    assert failed["state"] == "failed" and failed["reason"].startswith("non-finite") and failed["log"].endswith("log.txt")
    assert "SIGTERM" in rows[ids[(0.0, 0)]]["reason"] and "(log: " in rows[ids[(0.0, 0)]]["reason"]

    assert cli(status_main, [str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{sweep}: 4 trials: 2 done, 0 running, 1 interrupted, 0 pending, 1 failed"
    assert out[1].split()[:3] == ["trial_id", "alpha", "seed"]
    row = next(line for line in out if line.startswith(ids[(-30.0, 2)]))
    assert row.split()[1:4] == ["-30", "2", "failed"] and "non-finite training loss" in row and "log.txt" in row


def test_state_filter_and_watch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, ids = sweep_with_outcomes(tmp_path)
    assert cli(status_main, [str(sweep), "--state", "failed,interrupted"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "2 done" in out[0]  # the counts stay whole
    assert sorted(line[:12] for line in out[2:]) == sorted([ids[(-30.0, 2)], ids[(0.0, 0)]])
    assert cli(status_main, [str(sweep), "--state", "broken"]) == 2
    assert "--state broken: no such state; allowed: done, running" in capsys.readouterr().err
    assert cli(status_main, [str(sweep), "--watch", "0"]) == 2
    # Nothing running or queued: --watch draws once and ends (it would redraw while something runs).
    assert cli(status_main, [str(sweep), "--watch", "0.1", "--state", "done"]) == 0
    assert capsys.readouterr().out.count("4 trials:") == 1


def test_a_failed_local_trial_names_the_log_that_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A local (or Ray) trial's status.json names no log: status showed none ("log": null), though the
    trial's trainer.log, or its fused group's, holds the traceback."""
    sweep, ids = sweep_with_outcomes(tmp_path)
    alone, member, first = (sweep / "trials" / ids[k] for k in ((-30.0, 2), (0.0, 0), (0.0, 2)))
    for folder in (alone, member):  # as a local launcher leaves them: no "log" in status.json
        status = json.loads((folder / R.STATUS).read_text())
        (folder / R.STATUS).write_text(json.dumps({**status, "log": None}))
    (alone / "trainer.log").write_text("2026-01-01 00:00:00 slot0: trainer.group " + alone.name + "\nTraceback ...\n")
    pointer = f"2026-01-02 00:00:00 trains with {first.name}: output in {first / 'trainer.log'}\n"
    (member / "trainer.log").write_text(f"2026-01-01 00:00:00 slot0: trainer.group {member.name}\n{pointer}")
    assert cli(status_main, [str(sweep), "--json"]) == 0
    rows = {r["trial_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows[alone.name]["log"] == str(alone / "trainer.log") and f"(log: {alone / 'trainer.log'})" in rows[alone.name]["reason"]
    assert rows[member.name]["log"] == str(first / "trainer.log")  # its last start was in first's group: that log
    assert rows[first.name]["log"] is None  # done: nothing to read


def test_watch_goes_on_while_a_launcher_of_the_sweep_is_alive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trials pending behind a live launcher (a local one with one worker, or its first worker
    starting) are still to run: --watch ended as soon as none was running (seen: after 8 s of a 31 s sweep)."""
    import subprocess
    import sys
    import time

    sweep, _ = sweep_with_outcomes(tmp_path)
    hold = "import sys, time; from pathlib import Path; from orchestrator.sweep_lock import launching\n" \
        "with launching(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))"  # fmt: skip
    launcher = subprocess.Popen([sys.executable, "-c", hold, str(sweep), "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None and launcher.stdout.readline().strip() == "held"
        start = time.monotonic()
        assert cli(status_main, [str(sweep), "--watch", "0.2", "--state", "done"]) == 0
        # it ended only once the launcher had let go (held 2 s from "held"), having redrawn meanwhile
        assert time.monotonic() - start > 1.5 and capsys.readouterr().out.count("4 trials:") >= 2
    finally:
        launcher.kill()
        launcher.wait()


def test_swept_fields_compare_values_as_json_writes_them() -> None:
    """1 and 1.0, 0.0 and -0.0 differ (JSON writes them apart); nan equals nan; a list compared whole."""
    from orchestrator.status import swept_fields

    def rows(key: str, *values: object) -> list[dict[str, object]]:
        return [{"same": "x", key: v} for v in values]

    assert swept_fields(rows("a", 1, 1.0)) == ["a"]
    assert swept_fields(rows("a", 0.0, -0.0)) == ["a"]
    assert swept_fields(rows("a", float("nan"), float("nan"))) == []
    assert swept_fields(rows("a", True, 1)) == ["a"]
    assert swept_fields(rows("a", [1, 2], [1, 2])) == [] and swept_fields(rows("a", [1, 2], [2, 1])) == ["a"]
    assert swept_fields(rows("a", "u", "u", "v")) == ["a"] and swept_fields(rows("a", None, None)) == []


def test_observe_reads_the_lock_with_the_status(tmp_path: Path) -> None:
    """A recorded state seen with the trial's lock: a done trial is done whoever holds its lock
    (observe skips probing it, issue 25); every other state is what the lock makes of it."""
    from trainer.lock import TrialLock
    from trainer.status import observe

    expected = {  # recorded state: (seen with no live holder, seen with the lock held)
        "done": ("done", "done"),
        "running": ("interrupted", "running"),
        "failed": ("failed", "running"),
        "interrupted": ("interrupted", "running"),
        "pending": ("pending", "running"),
        None: ("pending", "running"),  # no status.json
        "garbage": ("unreadable", "running"),
    }
    for recorded, (free, held) in expected.items():
        folder = tmp_path / str(recorded)
        folder.mkdir()
        if recorded == "garbage":
            (folder / R.STATUS).write_text("{not json")
        elif recorded is not None:
            (folder / R.STATUS).write_text(json.dumps({"state": recorded, "attempts": 1}))
        assert observe(folder).state == free, recorded  # no lock file yet
        with TrialLock(folder):  # another open file description: a live holder
            assert observe(folder).state == held, recorded
        assert observe(folder).state == free, recorded  # the lock file stays, nobody holds it
    missing = observe(tmp_path / "never-made")
    assert (missing.state, missing.status.attempts) == ("pending", 0)


def test_status_and_plan_import_neither_pyarrow_nor_torch(tmp_path: Path) -> None:
    """Importing pyarrow (via the trial-folder file names in trainer.results) was ~0.3 s of every
    `status` and rerun plan at any size (issue 25); torch would be seconds."""
    sweep, _ = sweep_with_outcomes(tmp_path)
    code = f"from orchestrator.status import main; from orchestrator.plan import make_plan; main([{str(sweep)!r}])"
    out, imported = imported_by(code, ("pyarrow", "pandas", "torch"))
    assert "4 trials" in out and imported == []


def test_read_bytes_reads_small_and_large_files_whole(tmp_path: Path) -> None:
    from trainer.files import read_bytes

    for size in (0, 10, (1 << 16) - 1, 1 << 16, 3 * (1 << 20) + 7):
        path = tmp_path / f"f{size}"
        data = os.urandom(size)
        path.write_bytes(data)
        assert read_bytes(str(path)) == data, size
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing"))
    with pytest.raises(IsADirectoryError):
        read_bytes(str(tmp_path))
