"""The on-disk layouts of ImageNet (ILSVRC2012) under <data root>/imagenet, listed once.

    train/<wnid>/*.JPEG                       classes = the sorted wnids (as ImageFolder)
    val/<wnid>/*.JPEG                         class folders, or
    val/ILSVRC2012_val_00000001.JPEG ...      the flat folder of the official tar, labelled by
        ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt + meta.mat (the devkit), or
        LOC_val_solution.csv (Kaggle: ImageId,PredictionString; the first token is the wnid)

`list_layout(folder)` returns the listing the manifest stores; every user mistake is one
DataMissing/UserError line naming the path and what to do. Only trainer.imagenet.manifest calls it:
trials read the manifest and never list the tree.

Bad entries (a FIFO, socket or device; a dangling symlink; a symlink loop, be it a file linked to
itself or a folder linked to one above it) are never opened and never followed in a loop: inside a
class folder they are listed as bad images (the loaders skip them up front, `--check` names them);
directly in train/ or val/ they are no class and no image, and `Layout.bad` names them.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from trainer.datatypes import DataMissing
from trainer.errors import UserError

# As torchvision's ImageFolder: a file is an image by its extension, case-insensitive.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEVKIT = "ILSVRC2012_devkit_t12"
DEVKIT_GT = f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = f"{DEVKIT}/data/meta.mat"
KAGGLE_CSV = "LOC_val_solution.csv"
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")
SHOW = 5  # how many names a message lists


@dataclass
class Listing:
    """Relative paths (to the imagenet folder), labels, wnids and sizes of one split."""

    paths: list[str]
    labels: list[int]
    wnids: list[str]
    sizes: list[int]
    errors: dict[int, str] = field(default_factory=dict)  # row -> why it is a bad entry (never opened)


@dataclass
class Layout:
    classes: list[str]
    train: Listing
    val: Listing
    val_layout: str  # "folders" | "flat"
    ground_truth: list[str]  # files the flat val's labels came from (relative); [] for folders
    bad: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why) of bad entries in train/ or val/


def _names(items: list[str]) -> str:
    more = f" and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def entry_kind(entry: os.DirEntry[str], above: frozenset[str]) -> tuple[str, int | str]:
    """("dir", 0), ("file", size) or ("bad", why) for one directory entry; never opens it.

    `above`: the real paths of the folders this one lies in, so that a folder link back to one of
    them is a loop (the scan would never end), not a folder.
    """
    try:
        st = entry.stat(follow_symlinks=True)
    except FileNotFoundError:
        return "bad", "dangling symlink" if entry.is_symlink() else "vanished while listed"
    except OSError as err:
        why = "symlink loop" if err.errno == errno.ELOOP else f"cannot stat: {os.strerror(err.errno or 0)}"
        return "bad", why
    if stat.S_ISDIR(st.st_mode):
        if entry.is_symlink() and os.path.realpath(entry.path) in above:
            return "bad", "symlink loop (links to a folder above it)"
        return "dir", 0
    if stat.S_ISREG(st.st_mode):
        return "file", st.st_size
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    kind = next((name for test, name in kinds if test(st.st_mode)), "a special file")
    return "bad", f"not a regular file ({kind})"


def _scan(folder: Path, rel: str, above: frozenset[str] = frozenset()) -> list[tuple[str, int | str]]:
    """(relative path, size) of the images under `folder`, recursively (as ImageFolder), sorted;
    (relative path, why) for its bad entries, which are not followed."""
    above = above | {os.path.realpath(folder)}
    out: list[tuple[str, int | str]] = []
    with os.scandir(folder) as it:
        for entry in it:
            kind, value = entry_kind(entry, above)
            if kind == "dir":
                out.extend(_scan(Path(entry.path), f"{rel}/{entry.name}", above))
            elif kind == "bad" or is_image(entry.name):
                out.append((f"{rel}/{entry.name}", value))
    return sorted(out)


def _subfolders(folder: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(sorted sub-folder names, sorted image file names, sorted (name, why) of bad entries) directly in `folder`."""
    dirs, files, bad = [], [], []
    above = frozenset({os.path.realpath(folder)})
    with os.scandir(folder) as it:
        for entry in it:
            kind, value = entry_kind(entry, above)
            if kind == "dir":
                dirs.append(entry.name)
            elif kind == "bad":
                bad.append((entry.name, str(value)))
            elif is_image(entry.name):
                files.append(entry.name)
    return sorted(dirs), sorted(files), sorted(bad)


def _list_classes(base: Path, rel: str, classes: list[str], index: dict[str, int], threads: int) -> Listing:
    # Class folders are listed by a thread pool: on a cluster file system each listing waits on
    # the metadata server, not on this CPU.
    with ThreadPoolExecutor(max(1, threads)) as pool:
        above = frozenset({os.path.realpath(base), os.path.realpath(base / rel)})
        found = list(pool.map(lambda c: _scan(base / rel / c, f"{rel}/{c}", above), classes))
    listing = Listing([], [], [], [])
    for wnid, files in zip(classes, found):
        for path, size in files:
            if isinstance(size, str):
                listing.errors[len(listing.paths)] = size
            listing.paths.append(path)
            listing.labels.append(index[wnid])
            listing.wnids.append(wnid)
            listing.sizes.append(size if isinstance(size, int) else 0)
    return listing


def list_layout(folder: Path, threads: int = 16) -> Layout:
    """List <data root>/imagenet (`folder`); one-line DataMissing/UserError on any layout problem."""
    train, val = folder / "train", folder / "val"
    for path, what in ((train, "train/<wnid>/*.JPEG"), (val, "val/<wnid>/*.JPEG or the flat val/ILSVRC2012_val_*.JPEG")):
        if not path.is_dir():
            raise DataMissing(f"dataset 'imagenet': {path} not found; put ImageNet's {what} under {folder}")
    classes, stray, bad_train = _subfolders(train)
    if not classes:
        raise DataMissing(
            f"dataset 'imagenet': no class folders in {train}; expected train/<wnid>/*.JPEG (found {len(stray)} loose images)"
        )
    index = {w: i for i, w in enumerate(classes)}
    train_listing = _list_classes(folder, "train", classes, index, threads)
    good = {w for i, w in enumerate(train_listing.wnids) if i not in train_listing.errors}
    empty = sorted(set(classes) - good)
    if empty:
        raise DataMissing(f"dataset 'imagenet': train class folders without images: {_names(empty)} (under {train})")

    val_dirs, val_files, bad_val = _subfolders(val)
    if val_dirs and val_files:
        raise UserError(
            f"dataset 'imagenet': {val} holds both class folders and loose images ({val_files[0]}); "
            "use either val/<wnid>/*.JPEG or the flat val/ILSVRC2012_val_*.JPEG, not both"
        )
    if val_files:
        wnid_of, gt = _ground_truth(folder, val_files)
        val_listing = Listing([], [], [], [])
        for name in val_files:
            wnid = wnid_of(name)
            if wnid not in index:
                continue  # reported below with all others
            val_listing.paths.append(f"val/{name}")
            val_listing.labels.append(index[wnid])
            val_listing.wnids.append(wnid)
            val_listing.sizes.append(os.stat(val / name).st_size)
        val_classes = sorted({wnid_of(n) for n in val_files})
        layout, where = "flat", f"the val ground truth ({', '.join(gt)})"
    elif val_dirs:
        known = [c for c in val_dirs if c in index]
        val_listing = _list_classes(folder, "val", known, index, threads)
        val_classes, gt, layout, where = val_dirs, [], "folders", f"the val class folders ({val})"
    else:
        raise DataMissing(f"dataset 'imagenet': {val} is empty; put val/<wnid>/*.JPEG or the flat val/ILSVRC2012_val_*.JPEG there")
    _compare_classes(classes, val_classes, set(val_listing.wnids), train, where)
    bad = [(f"train/{name}", why) for name, why in bad_train] + [(f"val/{name}", why) for name, why in bad_val]
    return Layout(classes, train_listing, val_listing, layout, gt, bad)


def _compare_classes(classes: list[str], val_classes: list[str], val_with_images: set[str], train: Path, where: str) -> None:
    extra = sorted(set(val_classes) - set(classes))
    if extra:
        raise UserError(
            f"dataset 'imagenet': {where} name classes with no train class folders: {_names(extra)}; "
            f"train ({train}) and val must hold the same classes"
        )
    absent = [c for c in classes if c not in val_with_images]
    if absent:
        raise UserError(
            f"dataset 'imagenet': train class folders absent from {where}: {_names(absent)}; "
            f"train ({train}) and val must hold the same classes"
        )


def _val_number(name: str) -> int:
    m = _VAL_NUMBER.search(name)
    if m is None:
        raise UserError(
            f"dataset 'imagenet': flat val file {name} is not named ILSVRC2012_val_<number>.JPEG; sort val into val/<wnid>/ folders"
        )
    return int(m.group(1))


def _ground_truth(folder: Path, val_files: list[str]):
    """A function file name -> wnid for the flat val folder, and the files it was read from."""
    gt, meta, kaggle = folder / DEVKIT_GT, folder / DEVKIT_META, folder / KAGGLE_CSV
    if gt.is_file() and meta.is_file():
        ids = _read_ids(gt)
        wnid_of_id = read_meta_mat(meta)
        table: dict[int, str] = {}
        for n, ilsvrc_id in enumerate(ids, start=1):
            if ilsvrc_id not in wnid_of_id:
                raise UserError(f"dataset 'imagenet': {gt} line {n} names ILSVRC2012_ID {ilsvrc_id}, which {meta} does not list as a class")
            table[n] = wnid_of_id[ilsvrc_id]
        missing = [name for name in val_files if _val_number(name) not in table]
        if missing:
            raise UserError(f"dataset 'imagenet': {gt} has {len(ids)} lines, no label for {_names(missing)}")
        return (lambda name: table[_val_number(name)]), [DEVKIT_GT, DEVKIT_META]
    if kaggle.is_file():
        by_stem = read_kaggle_csv(kaggle)
        missing = [name for name in val_files if Path(name).stem not in by_stem]
        if missing:
            raise UserError(f"dataset 'imagenet': {kaggle} has no row for {_names(missing)}")
        return (lambda name: by_stem[Path(name).stem]), [KAGGLE_CSV]
    tar = folder / f"{DEVKIT}.tar.gz"
    hint = f"extract {tar} there, or " if tar.exists() else ""
    raise DataMissing(
        f"dataset 'imagenet': {folder / 'val'} is the flat layout (ILSVRC2012_val_*.JPEG) but its labels are missing: "
        f"looked for {gt} with {meta.name} (the devkit) and {kaggle}; {hint}put the extracted {DEVKIT} folder or Kaggle's "
        f"{KAGGLE_CSV} under {folder}, or sort val into val/<wnid>/ class folders"
    )


def _read_ids(gt: Path) -> list[int]:
    """The devkit's ground truth: one ILSVRC2012_ID per val image, in val file-number order."""
    allowed = "one ILSVRC2012_ID (a whole number) per line, as the devkit ships it; re-extract the devkit"
    try:
        values = gt.read_text(encoding="utf-8").split()
    except UnicodeDecodeError as err:  # a file edited and saved as UTF-16, or another file under its name
        raise UserError(f"dataset 'imagenet': {gt} is not UTF-8 text ({err.reason} at byte {err.start}); allowed: {allowed}") from None
    for n, value in enumerate(values, start=1):
        if not (value.isascii() and value.isdigit()):
            raise UserError(f"dataset 'imagenet': {gt} value {n} (ILSVRC2012_val_{n:08d}'s label) is {value[:40]!r}; allowed: {allowed}")
    return [int(value) for value in values]


def read_meta_mat(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1,000 leaf synsets in the devkit's meta.mat.

    meta.mat holds a struct array `synsets` (ILSVRC2012_ID, WNID, words, gloss, num_children, ...);
    the classes are the synsets without children (as torchvision's parse_meta_mat reads it).
    """
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except Exception as err:  # noqa: BLE001  # scipy raises ValueError/KeyError/... for a damaged or foreign file
        raise UserError(f"dataset 'imagenet': cannot read {path} ({type(err).__name__}: {err}); re-extract the devkit") from None


def read_kaggle_csv(path: Path) -> dict[str, str]:
    """ImageId -> wnid (the first token of PredictionString) of Kaggle's LOC_val_solution.csv."""
    out: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
                raise UserError(f"dataset 'imagenet': {path} lacks the columns ImageId,PredictionString of Kaggle's LOC_val_solution.csv")
            for row in reader:
                tokens = (row["PredictionString"] or "").split()
                if tokens:
                    out[row["ImageId"]] = tokens[0]
    except (UnicodeDecodeError, csv.Error) as err:  # saved in another encoding, NUL bytes, another file under its name
        why = f"not UTF-8 text ({err.reason} at byte {err.start})" if isinstance(err, UnicodeDecodeError) else f"not a CSV file ({err})"
        allowed = "Kaggle's LOC_val_solution.csv as downloaded (UTF-8, columns ImageId,PredictionString)"
        raise UserError(f"dataset 'imagenet': {path} is {why}; allowed: {allowed}") from None
    return out
