"""The fast path of `python -m orchestrator.collect` over an unchanged sweep (orchestrator.collect.unchanged).

Nothing changed: the command says "unchanged", rewrites nothing, and the summary stays byte for
byte. Any change (a trial's file touched, rewritten, added or removed; a lock taken; a summary
file removed or touched; other options; other code; --full) is a full collect whose tables equal
those of a `--full` one. Synthetic trials (benchmarks.synthetic), in-process commands, no figures.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.synthetic import write_trial
from orchestrator.collect import command, unchanged
from trainer import results as R
from trainer.cli import cli
from trainer.lock import LOCK
from trainer.spec import TrialSpec

from helpers import imported_by

FAST = "unchanged since the last collect"


def make_sweep(root: Path) -> tuple[Path, list[TrialSpec]]:
    """Six done trials, one of them failed by its status (an excluded line), one interrupted with a lock file."""
    sweep = root / "s"
    specs = [TrialSpec(sweep="s", alpha=a, seed=s, epochs=3) for a in (-1.0, 0.0) for s in (0, 1, 2)]
    for spec in specs:
        write_trial(sweep, spec, units=False)
    failed = sweep / "trials" / specs[0].trial_id
    (failed / R.STATUS).write_text(json.dumps({"state": "failed", "attempts": 1, "error": "boom", "error_kind": "diverged"}))
    interrupted = sweep / "trials" / specs[1].trial_id
    (interrupted / R.STATUS).write_text(json.dumps({"state": "running", "attempts": 1}))
    (interrupted / LOCK).write_text("")  # a lock file nobody holds: its process died
    return sweep, specs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli(command.main, list(argv)) == 0
    out, _ = capsys.readouterr()
    return out


def summary_bytes(sweep: Path) -> dict[str, bytes]:
    """Every summary file but report.md (it says when it was written)."""
    summary = sweep / "summary"
    return {str(p.relative_to(summary)): p.read_bytes() for p in sorted(summary.rglob("*")) if p.is_file() and p.name != "report.md"}


def tables(sweep: Path) -> dict[str, bytes]:
    return {name: data for name, data in summary_bytes(sweep).items() if name.endswith(".parquet")}


def test_unchanged_sweep_takes_the_fast_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, specs = make_sweep(tmp_path)
    first = run(capsys, str(sweep), "--no-figures")
    assert FAST not in first and "wrote" in first and "1 interrupted" in first
    before = summary_bytes(sweep) | {"report.md": (sweep / "summary" / "report.md").read_bytes()}
    stats = {p: p.stat().st_mtime_ns for p in (sweep / "summary").rglob("*")}

    second = run(capsys, str(sweep), "--no-figures")
    assert FAST in second and "wrote" not in second
    assert f"unchanged {sweep}/summary/: 7 tables (.parquet), report.md" in second
    # The same lines as the collect that derived the summary, but the first's counts of reads.
    assert second.splitlines()[1:-1] == first.splitlines()[1:-1] and "diverged: boom" in second
    assert second.splitlines()[0].split(" (")[0] == first.splitlines()[0].split(" (")[0]
    assert summary_bytes(sweep) | {"report.md": (sweep / "summary" / "report.md").read_bytes()} == before
    assert {p: p.stat().st_mtime_ns for p in (sweep / "summary").rglob("*")} == stats  # nothing rewritten

    assert FAST not in run(capsys, str(sweep), "--no-figures", "--full")  # --full always collects
    assert FAST in run(capsys, str(sweep), "--no-figures")  # ... and records the fast path too


def test_fast_path_imports_neither_pyarrow_nor_pandas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, _ = make_sweep(tmp_path)
    run(capsys, str(sweep), "--no-figures")
    code = f"from orchestrator.collect.command import main; main([{str(sweep)!r}, '--no-figures'])"
    out, imported = imported_by(code, ("pyarrow", "pandas"))
    assert FAST in out and imported == []


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same bytes, another mtime


def _hold_lock(sweep: Path, specs: list[TrialSpec]) -> Callable[[], None]:
    """The interrupted trial's lock taken again (its file not written): now it is running."""
    fd = os.open(sweep / "trials" / specs[1].trial_id / LOCK, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return lambda: os.close(fd)


def _code_changed(sweep: Path, specs: list[TrialSpec]) -> None:
    """As if the collector's code had been other when the summary was written."""
    path = sweep / "summary" / unchanged.RECORD
    data = json.loads(path.read_text())
    name = next(n for n in data["code"] if n.endswith("collect/stats.py"))
    data["code"][name] = "0" * 32
    path.write_text(json.dumps(data))


CHANGES: dict[str, Callable[[Path, list[TrialSpec]], object]] = {
    "status.json touched": lambda sweep, specs: _touch(sweep / "trials" / specs[3].trial_id / R.STATUS),
    "status.json says failed": lambda sweep, specs: (sweep / "trials" / specs[4].trial_id / R.STATUS).write_text(
        json.dumps({"state": "failed", "attempts": 1, "error": "later"})
    ),
    "a rows file replaced": lambda sweep, specs: write_trial(sweep, specs[5], units=False),
    "a trial added": lambda sweep, specs: write_trial(sweep, TrialSpec(sweep="s", alpha=1.0, seed=0, epochs=3), units=False),
    "a trial removed": lambda sweep, specs: shutil.rmtree(sweep / "trials" / specs[2].trial_id),
    "a lock taken": _hold_lock,
    "a table deleted": lambda sweep, specs: (sweep / "summary" / "conditions.parquet").unlink(),
    "report.md touched": lambda sweep, specs: _touch(sweep / "summary" / "report.md"),
    "another collector": _code_changed,
}


@pytest.mark.slow
@pytest.mark.parametrize("change", list(CHANGES) + ["figures asked for", "the path spelled otherwise"])
def test_any_change_is_a_full_collect(change: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    sweep, specs = make_sweep(tmp_path)
    run(capsys, str(sweep), "--no-figures")
    argv = [str(sweep), "--no-figures"]
    release = CHANGES[change](sweep, specs) if change in CHANGES else None
    if change == "figures asked for":
        argv = [str(sweep)]
    elif change == "the path spelled otherwise":  # report.md names the sweep as given
        monkeypatch.chdir(tmp_path)
        argv = ["s", "--no-figures"]
    try:
        out = run(capsys, *argv)
        assert FAST not in out and "wrote" in out, out
        if change == "a lock taken":
            assert "1 running" in out and "interrupted" not in out
        incremental = tables(sweep)
        assert FAST in run(capsys, *argv)  # the full collect recorded the fast path for its own result
        run(capsys, *argv, "--full")
        assert tables(sweep) == incremental
    finally:
        if callable(release):
            release()


def test_a_collect_that_warned_records_no_fast_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, _ = make_sweep(tmp_path)
    (sweep / "trials" / "notes").mkdir()  # not a trial id: every collect says so
    for _ in range(2):
        assert cli(command.main, [str(sweep), "--no-figures"]) == 0
        out, err = capsys.readouterr()
        assert FAST not in out and "ignored 1 entry not named by a trial id" in err
    assert not (sweep / "summary" / unchanged.RECORD).exists()
