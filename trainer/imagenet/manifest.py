"""The ImageNet manifest: the tree listed (and optionally every image decoded) once, cached.

    python -m trainer.imagenet.manifest --data-root DIR [--check] [--workers N] [--cache-dir DIR] [--rebuild]

writes, into <cache dir>/imagenet-<hash of the absolute imagenet folder>/ (the data root may be
read-only; cache dir: --cache-dir, else $SWEEP_CACHE_DIR, else ~/.cache/selectivity-sweep):

    train.parquet, val.parquet   path (relative to <data root>/imagenet), label, wnid, size (bytes),
                                 ok (null: not checked), error, height, width (null: not checked)
    manifest.json                classes, val layout, ground-truth files, the staleness stamp

Each file is written to a temporary name and renamed; manifest.json goes last and names the
token that both Parquet files carry in their metadata, so a reader never mixes two writes.

Trials call `ensure_manifest` (through trainer.imagenet.dataset): they read the manifest and never
list the tree; without one they list it themselves (no decoding) and cache the result.
`preflight` is the launcher's fast check before anything is written.

Staleness rule: the stamp holds the modification time (ns) of imagenet/, train/, val/, every
class folder train/<wnid>/ and val/<wnid>/, and of the ground-truth files (with their sizes).
Adding, removing or renaming a file changes its folder's time, so the manifest is rebuilt. A
file rewritten in place under the same name is not noticed (nor is a copy that preserves folder
times): run with --rebuild then. Checking the stamp is ~2,000 stat calls, no listing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.datatypes import DataMissing
from trainer.imagenet.layout import Layout, Listing, list_layout

log = logging.getLogger(__name__)
FORMAT = 1
JSON = "manifest.json"
SPLITS = ("train", "val")
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.int32()),
        ("wnid", pa.string()),
        ("size", pa.int64()),
        ("ok", pa.bool_()),
        ("error", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
    ]
)


@dataclass
class Split:
    """One split as the loaders use it: row i is sample i."""

    table: pa.Table  # SCHEMA

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def paths(self) -> pa.Array:
        return self.table.column("path").combine_chunks()

    @property
    def labels(self) -> np.ndarray:
        return self.table.column("label").to_numpy().astype(np.int64)

    @property
    def bad(self) -> np.ndarray:
        """True where a --check found the file unreadable (skipped up front)."""
        return self.table.column("ok").combine_chunks().fill_null(True).to_numpy(zero_copy_only=False) == False  # noqa: E712 - elementwise on an array

    @property
    def sizes_hw(self) -> np.ndarray:
        """[n, 2] int32 (height, width) from --check; -1 where unknown."""
        h = self.table.column("height").combine_chunks().fill_null(-1).to_numpy()
        w = self.table.column("width").combine_chunks().fill_null(-1).to_numpy()
        return np.stack([h, w], axis=1).astype(np.int32)

    def bad_files(self) -> list[tuple[str, str]]:
        rows = self.table.filter(pc.equal(self.table.column("ok"), False))
        return list(zip(rows.column("path").to_pylist(), rows.column("error").to_pylist()))


@dataclass
class Manifest:
    folder: Path  # <data root>/imagenet
    classes: list[str]
    train: Split
    val: Split
    val_layout: str
    ground_truth: list[str]
    checked: bool = False
    where: Path | None = None  # the cache folder it was read from / written to (None: in memory only)
    stamp: dict[str, int] = field(default_factory=dict)
    bad_entries: list[tuple[str, str]] = field(default_factory=list)  # (path, why) in train/ or val/ themselves: no class, no image


# ---- where ------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    return Path(os.environ.get("SWEEP_CACHE_DIR") or "~/.cache/selectivity-sweep").expanduser()


def manifest_dir(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """<cache dir>/imagenet-<16 hex of sha256 of the absolute imagenet folder>."""
    folder = os.path.abspath(Path(root).expanduser() / "imagenet")
    key = hashlib.sha256(folder.encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()).expanduser() / f"imagenet-{key}"


# ---- staleness --------------------------------------------------------------------------------
def make_stamp(folder: Path, classes: list[str], val_layout: str, ground_truth: list[str]) -> dict[str, int]:
    """Modification times (and ground-truth sizes) that change when the tree's listing does; stat only."""
    rels = [".", "train", "val", *(f"train/{c}" for c in classes)]
    if val_layout == "folders":
        rels += [f"val/{c}" for c in classes]
    out = {}
    for rel in rels:
        out[rel] = os.stat(folder / rel).st_mtime_ns
    for rel in ground_truth:
        st = os.stat(folder / rel)
        out[rel] = st.st_mtime_ns
        out[f"{rel}#size"] = st.st_size
    return out


def _fresh(m: Manifest) -> bool:
    try:
        return make_stamp(m.folder, m.classes, m.val_layout, m.ground_truth) == m.stamp
    except OSError:
        return False


# ---- build, read, write -----------------------------------------------------------------------
def _table(listing: Listing) -> pa.Table:
    n = len(listing.paths)
    # Bad entries (special files, dangling links, link loops) are bad images from the start.
    ok = [False if i in listing.errors else None for i in range(n)]
    return pa.table(
        {
            "path": pa.array(listing.paths, pa.string()),
            "label": pa.array(listing.labels, pa.int32()),
            "wnid": pa.array(listing.wnids, pa.string()),
            "size": pa.array(listing.sizes, pa.int64()),
            "ok": pa.array(ok, pa.bool_()),
            "error": pa.array([listing.errors.get(i) for i in range(n)], pa.string()),
            "height": pa.nulls(n, pa.int32()),
            "width": pa.nulls(n, pa.int32()),
        },
        schema=SCHEMA,
    )


def from_layout(folder: Path, layout: Layout) -> Manifest:
    stamp = make_stamp(folder, layout.classes, layout.val_layout, layout.ground_truth)
    return Manifest(
        folder, layout.classes, Split(_table(layout.train)), Split(_table(layout.val)), layout.val_layout, layout.ground_truth,
        stamp=stamp, bad_entries=layout.bad,
    )  # fmt: skip


def read_manifest(where: Path, folder: Path) -> Manifest | None:
    """The cached manifest of `folder` if it is complete, consistent and fresh, else None."""
    try:
        meta = json.loads((where / JSON).read_text())
        if meta.get("format") != FORMAT or meta.get("imagenet") != str(folder):
            return None
        tables = {}
        for split in SPLITS:
            table = pq.read_table(where / f"{split}.parquet")
            if (table.schema.metadata or {}).get(b"token", b"").decode() != meta["token"]:
                return None  # a concurrent or interrupted write: rebuild
            tables[split] = table.cast(SCHEMA)
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return None
    m = Manifest(
        folder, list(meta["classes"]), Split(tables["train"]), Split(tables["val"]), meta["val_layout"],
        list(meta["ground_truth"]), bool(meta["checked"]), where, {k: int(v) for k, v in meta["stamp"].items()},
        [(str(p), str(why)) for p, why in meta.get("bad_entries", [])],
    )  # fmt: skip
    return m if _fresh(m) else None


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_manifest(m: Manifest, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    for split in SPLITS:
        table = getattr(m, split).table.replace_schema_metadata({"token": token})
        _atomic_write(where / f"{split}.parquet", lambda p, t=table: pq.write_table(t, p))
    bad = {s: len(getattr(m, s).bad_files()) for s in SPLITS}
    meta = {
        "format": FORMAT, "token": token, "imagenet": str(m.folder), "classes": m.classes, "val_layout": m.val_layout,
        "ground_truth": m.ground_truth, "checked": m.checked, "stamp": m.stamp,
        "counts": {s: len(getattr(m, s)) for s in SPLITS}, "bad": bad if m.checked else None,
        "bad_entries": m.bad_entries,
    }  # fmt: skip
    _atomic_write(where / JSON, lambda p: p.write_text(json.dumps(meta, indent=1)))
    m.where = where


def ensure_manifest(
    root: str | Path,
    cache_dir: str | Path | None = None,
    check: bool = False,
    progress: bool = False,
    workers: int | None = None,
    rebuild: bool = False,
) -> Manifest:
    """The manifest of <root>/imagenet: read from the cache if fresh, else listed (and cached).

    check: decode every image (in `workers` processes) and record ok/error/height/width.
    A cache folder that cannot be written is not an error: the manifest then lives in memory
    (and a warning says so); the trial only pays the listing again next time.
    """
    folder = Path(os.path.abspath(Path(root).expanduser() / "imagenet"))
    if not (folder / "train").is_dir():
        raise DataMissing(f"dataset 'imagenet': {folder / 'train'} not found; put ImageNet's train/<wnid>/*.JPEG and val/ under {folder}")
    where = manifest_dir(root, cache_dir)
    m = None if rebuild else read_manifest(where, folder)
    changed = m is None
    if m is None:
        m = from_layout(folder, list_layout(folder, threads=workers or 16))
        listed_bad = m.bad_entries + [row for s in SPLITS for row in getattr(m, s).bad_files()]
        if listed_bad:
            more = f"; and {len(listed_bad) - 5} more" if len(listed_bad) > 5 else ""
            shown = "; ".join(f"{p}: {why}" for p, why in listed_bad[:5]) + more
            log.warning("imagenet: %d bad entries in %s skipped, never opened (%s)", len(listed_bad), folder, shown)
    if check:
        from trainer.imagenet.check import check_split

        for split in SPLITS:
            s: Split = getattr(m, split)
            s.table = check_split(folder, s.table, workers=workers, progress=progress, label=split)
        m.checked, changed = True, True
    if changed:
        try:
            write_manifest(m, where)
        except OSError as err:
            log.warning("imagenet manifest not cached (%s: %s); it is kept in memory", where, err)
    return m


def preflight(root: str | Path, cache_dir: str | Path | None = None) -> None:
    """Fast check for launchers: the layout is complete and train/val hold the same classes.

    Builds (lists, no decoding) or reads the manifest; raises one-line DataMissing/UserError.
    """
    ensure_manifest(root, cache_dir)


# ---- command ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from trainer.cli import ArgumentParser, command

    p = ArgumentParser(prog="python -m trainer.imagenet.manifest", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="the folder that holds imagenet/")
    p.add_argument("--cache-dir", default=None, help="default: $SWEEP_CACHE_DIR or ~/.cache/selectivity-sweep")
    p.add_argument("--check", action="store_true", help="decode every image; bad ones are skipped up front by the loaders")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (and listing threads)")
    p.add_argument("--rebuild", action="store_true", help="list the tree again even if the cached manifest looks fresh")
    a = p.parse_args(argv)

    def body() -> int:
        m = ensure_manifest(a.data_root, a.cache_dir, check=a.check, progress=True, workers=a.workers, rebuild=a.rebuild)
        print(f"imagenet manifest: {len(m.classes)} classes, {len(m.train)} train, {len(m.val)} val ({m.val_layout} layout) -> {m.where}")
        if m.bad_entries:
            print(f"{len(m.bad_entries)} bad entries skipped" + "".join(f"\n  {p}: {e}" for p, e in m.bad_entries[:20]))
        for split in SPLITS:
            bad = getattr(m, split).bad_files()
            if m.checked or bad:
                print(f"{split}: {len(bad)} unreadable" + "".join(f"\n  {p}: {e}" for p, e in bad[:20]))
        return 0

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
