"""The fast path of `python -m orchestrator.collect` over a sweep that nothing changed since its last collect.

An unchanged sweep of 10,000 trials took ~18 s of CPU to re-derive tables identical to those on
disk (issue 25). After every collect, `record` writes summary/.cache/unchanged.json: a digest of
the stat of every entry of every trial folder (size, mtime_ns, inode; taken by `snapshot` before
the collect read anything), the lock state of the trials whose state depends on it, the stat of
every summary file (the manifest included), the collector's code and library versions, the
options, and the lines the command printed. `probe` redoes the stats (os.scandir and stat only: no
JSON, no spec.json, no Parquet) and, if every one is identical, the command prints the recorded
lines and stops. Anything different, or anything it cannot vouch for, is a full collect:

- any trial folder entry added, removed, replaced or touched (status.json, spec.json, rows, the
  after-training analyses' files; a stray file too), or an entry of trials/ added or removed;
- a trial not done last time whose lock is now held or released (running vs interrupted/pending);
- a summary file (table, report, figure, the cache's manifest) removed, replaced, touched or added;
- other options (--no-figures, another spelling of the sweep's path: report.md names it), and
  --full, which is always a full collect;
- other code: a module of the collector's packages with other content, or another Python,
  pyarrow, pandas, numpy or matplotlib;
- a collect that warned (a stray folder, a corrupt file): no record, so the warning is said again.

This module imports nothing heavy (no pyarrow, no pandas): the fast path costs the interpreter,
the stats and a few small reads. The record is removed with the manifest (cache.invalidate), so a
collect killed half-way leaves none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from trainer.lock import is_locked

VERSION = 1
RECORD = Path(".cache") / "unchanged.json"
MANIFEST = Path(".cache") / "manifest.json"  # cache.MANIFEST (not imported: cache imports pyarrow)
PACKAGES = ("orchestrator", "trainer")  # the project's modules a collect runs: their content is the code version
LIBRARIES = ("pyarrow", "polars", "pandas", "numpy", "matplotlib")  # their versions shape what is read and written
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Lines:
    """What the command prints about a collect, kept for the fast path to print again."""

    counted: str  # "4 done, 1 failed, 0 running, 0 pending"
    cached: int  # done trials aggregated
    excluded: list[str]  # the excluded trials' lines
    outputs: str  # "<summary>/: 7 tables (.parquet), report.md, figures/ (4 PNG)"

    def text(self, sweep: Path) -> str:
        head = f"{sweep}: {self.counted} (unchanged since the last collect: read 0 trials, {self.cached} from the cache)"
        return "\n".join([head, *self.excluded, f"unchanged {self.outputs}"])


def _stat(st: os.stat_result) -> list[int]:
    return [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino]


def snapshot(sweep: Path) -> str:
    """A digest of the stat of every entry of trials/ and of every entry of each folder in it (no file is read)."""
    trials = sweep / "trials"
    h = hashlib.blake2b(digest_size=20)
    with os.scandir(trials) as it:
        entries = sorted((e.name, e.is_dir()) for e in it)
    for name, is_dir in entries:
        h.update(f"{name}\0{is_dir}\n".encode())
        if not is_dir:
            continue
        with os.scandir(trials / name) as it:
            stats = sorted((e.name, *_stat(e.stat(follow_symlinks=False))) for e in it)
        h.update(repr(stats).encode())
    return h.hexdigest()


def _outputs(summary: Path) -> dict[str, list[int]]:
    """The stat of every summary file (summary/, figures/, the cache's manifest); the record itself is not one."""
    found: dict[str, list[int]] = {}
    for folder in (summary, summary / "figures"):
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if e.name != ".cache":
                        found[str(Path(e.path).relative_to(summary))] = _stat(e.stat(follow_symlinks=False))
        except FileNotFoundError:
            pass
    with contextlib.suppress(FileNotFoundError):
        found[str(MANIFEST)] = _stat(os.stat(summary / MANIFEST))
    return found


def _code(files: list[str]) -> dict[str, str]:
    """{file relative to the repository: digest of its content}; a file gone: ''."""
    out = {}
    for rel in files:
        try:
            out[rel] = hashlib.blake2b((ROOT / rel).read_bytes(), digest_size=16).hexdigest()
        except OSError:
            out[rel] = ""
    return out


def _loaded_code() -> list[str]:
    """The project's module files this process has imported (a full collect imports all those it runs)."""
    files = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.split(".")[0] in PACKAGES and path:
            try:
                files.add(str(Path(path).resolve().relative_to(ROOT)))
            except ValueError:  # installed elsewhere: not this repository's code
                continue
    return sorted(files)


def _environment() -> dict[str, str]:
    versions = {"python": sys.version}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""
    return versions


def _locks(sweep: Path, trial_ids: dict[str, bool]) -> dict[str, bool]:
    return {tid: is_locked(sweep / "trials" / tid) for tid in trial_ids}


def record(sweep: Path, summary: Path, figures: bool, inputs: str, locks: dict[str, bool], lines: Lines) -> None:
    """After a complete collect (the manifest saved): what `probe` needs to vouch for the next one.

    `inputs` is the `snapshot` taken before the collect read anything (a change while it ran makes
    the next collect a full one); `locks` {trial_id: locked} for each trial the collect saw as not
    done, as it saw them (for those, the lock decides running vs interrupted or pending).
    """
    data: dict[str, Any] = {
        "version": VERSION,
        "sweep": str(sweep),
        "figures": figures,
        "inputs": inputs,
        "locks": locks,
        "environment": _environment(),
        "code": _code(_loaded_code()),
        "outputs": _outputs(summary),
        "lines": {"counted": lines.counted, "cached": lines.cached, "excluded": lines.excluded, "outputs": lines.outputs},
    }
    path = summary / RECORD
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def remove(summary: Path) -> None:
    (summary / RECORD).unlink(missing_ok=True)


def probe(sweep: Path, figures: bool) -> tuple[Lines | None, str | None]:
    """The recorded lines if nothing the last collect read or wrote has changed since (see the
    module), else None; and the sweep's `snapshot` if it took one (the collect that follows a
    changed sweep uses it as its own: it was taken before any trial file was read).

    The cheap comparisons first; the stat of every trial folder's entries last.
    """
    taken: str | None = None
    summary = sweep / "summary"
    try:
        data = json.loads((summary / RECORD).read_bytes())
        if not isinstance(data, dict) or data.get("version") != VERSION:
            return None, None
        if data["sweep"] != str(sweep) or data["figures"] != figures or not os.access(summary, os.W_OK):
            return None, None
        if data["outputs"] != _outputs(summary) or data["environment"] != _environment():
            return None, None
        if data["code"] != _code(list(data["code"])) or data["locks"] != _locks(sweep, data["locks"]):
            return None, None
        taken = snapshot(sweep)
        if data["inputs"] != taken:
            return None, taken
        lines = data["lines"]
        return Lines(str(lines["counted"]), int(lines["cached"]), [str(x) for x in lines["excluded"]], str(lines["outputs"])), taken
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, taken  # no record, an unreadable one, or a folder gone: the full collect says what is wrong
