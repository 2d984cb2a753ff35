"""Stored activations and the representation tables computed from them; numpy and Arrow, no torch.

    python -m trainer.analysis.similarity_job --trial results/<sweep>/trials/<a> --against <b> [--against <c> ...]

The representation job (trainer.analysis.representation_job) stores, per kept checkpoint, every tracked layer's
activations on a fixed subset of the test set; this module holds that storage format and the two
tables made from activations with the measures of trainer.analysis.representation. The command above
compares trial a with each reference b at every epoch both stored and not yet in a's
similarity.parquet (no GPU, no data set, no torch; orchestrator.analysis.represent chooses the pairs).
Exit codes as trainer.run: 0 done, 2 user mistake, 75 busy.

    <trial>/activations/epoch_NNN.npz  one file per kept epoch (format below)
    <trial>/dimensionality.parquet     the trial's fields, then epoch, layer, n_units, n_images,
                                       pcs_95 (principal components for 95% of the variance),
                                       participation_ratio, pcs_95_per_unit (pcs_95 / min(n_units,
                                       n_images - 1): comparable across layers of different widths)
    <trial>/similarity.parquet         the trial's fields, then reference_id, reference_seed,
                                       reference_alpha, pair, epoch, layer, n_units, n_images,
                                       cka (linear CKA), pwcca_distance (Morcos et al.'s formula,
                                       weights from this trial), pwcca_distance_svcca (google/svcca's
                                       code, its else-branch fixed: docs/analysis.md)

A similarity row compares this trial (a) with a reference trial (b) at one epoch both kept, layer
by layer; `pair` is "vs_unregularized" when a is regularized (b: the unregularized trial of the
same seed), "vs_unregularized_other_seed" when b is the unregularized trial of another seed (no
shared initialisation or batch order: read directly against the seed baseline), and
"across_seeds" when both are unregularized (the baseline of how alike two seeds are).
orchestrator.analysis.represent chooses the pairs.

Storage format (one .npz per epoch, read lazily layer by layer): "layers" the layer names in
order, "images" the test-set indices (the same for every trial of a data set, so rows align),
"labels"; per layer "<layer>" float16 [N, U], each unit's deviation from its mean divided by its
largest absolute deviation (so every unit uses float16's full 11-bit precision, whatever its scale,
and nothing overflows), "<layer>.mean" and "<layer>.scale" float32 [U]. decoded = z * scale +
mean. The measures center the units, so the mean only serves readers of the raw values; a unit's
reconstruction error is at most 2^-12 of its largest deviation, far below what moves CKA, PWCCA or
the component count (tests/test_represent.py). Storage per epoch: N x U x 2 bytes.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer import results as R
from trainer.analysis.representation import linear_cka, participation_ratio, pcs_for_variance, pwcca_distance, pwcca_distance_svcca
from trainer.cli import EXIT_DONE, ArgumentParser, command
from trainer.errors import UserError
from trainer.files import kept_checkpoint_epochs  # noqa: F401  (here too for its callers)
from trainer.lock import TrialLock
from trainer.spec import TrialSpec

ACTIVATIONS = "activations"
DIMENSIONALITY = "dimensionality.parquet"
SIMILARITY = "similarity.parquet"
MINIBATCH_CKA = "minibatch_cka.parquet"  # written by trainer.analysis.minibatch_cka_job (torch), read by the collector
VARIANCE_FRACTION = 0.95  # pcs_95: components for this fraction of a layer's variance
PAIRS = ("vs_unregularized", "across_seeds", "vs_unregularized_other_seed")
DEFAULT_IMAGES = 10_000  # test images analysed, at most, for sets held in memory (CIFAR-10, Tiny ImageNet: all)
STREAMED_IMAGES = 5_000  # ImageNet's validation set: a seeded subset of this many (storage: docs/analysis.md)

DIMENSIONALITY_COLUMNS = pa.schema(
    [
        ("epoch", pa.int64()), ("layer", pa.string()), ("n_units", pa.int64()), ("n_images", pa.int64()),
        ("pcs_95", pa.int64()), ("participation_ratio", pa.float64()), ("pcs_95_per_unit", pa.float64()),
    ]
)  # fmt: skip
SIMILARITY_COLUMNS = pa.schema(
    [
        ("reference_id", pa.string()), ("reference_seed", pa.int64()), ("reference_alpha", pa.float64()), ("pair", pa.string()),
        ("epoch", pa.int64()), ("layer", pa.string()), ("n_units", pa.int64()), ("n_images", pa.int64()),
        ("cka", pa.float64()), ("pwcca_distance", pa.float64()), ("pwcca_distance_svcca", pa.float64()),
    ]
)  # fmt: skip


# ---- which images ------------------------------------------------------------------------------
def images_for(spec: TrialSpec, n_test: int, streamed: bool) -> int:
    """How many test images the trial's representation job reads (represent_images, else the default)."""
    if spec.represent_images is not None:
        return min(spec.represent_images, n_test)
    return min(n_test, STREAMED_IMAGES if streamed else DEFAULT_IMAGES)


def image_subset(n_test: int, images: int) -> np.ndarray:
    """The test-set indices analysed: all, or a seeded draw in test-set order, the same for every trial."""
    if images >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(0).permutation(n_test)[:images])


# ---- the stored activations --------------------------------------------------------------------
def activation_path(folder: Path, epoch: int) -> Path:
    return folder / ACTIVATIONS / f"epoch_{epoch:03d}.npz"


def stored_epochs(folder: Path) -> list[int]:
    """Epochs whose activations the trial stored, ascending."""
    found = (re.fullmatch(r"epoch_(\d+)\.npz", p.name) for p in (folder / ACTIVATIONS).glob("epoch_*.npz"))
    return sorted(int(m.group(1)) for m in found if m)


def encode(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, U] activations -> (float16 deviations / scale, float32 mean, float32 scale); a constant unit has scale 1."""
    a64 = np.asarray(a, dtype=np.float64)
    mean = a64.mean(axis=0)
    dev = a64 - mean
    scale = np.abs(dev).max(axis=0).astype(np.float32)
    scale[~(scale > 0)] = 1.0  # constant units (and non-finite ones, whose z keeps the NaN)
    return (dev / scale.astype(np.float64)).astype(np.float16), mean.astype(np.float32), scale


def decode(z: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The stored activations of one layer as float64 [N, U]."""
    return z.astype(np.float64) * scale.astype(np.float64) + mean.astype(np.float64)


def save_activations(
    folder: Path, epoch: int, layers: Sequence[str], acts: Sequence[np.ndarray], images: np.ndarray, labels: np.ndarray
) -> Path:
    """Write one epoch's activations (atomically: a killed job leaves the previous file or none)."""
    path = activation_path(folder, epoch)
    path.parent.mkdir(exist_ok=True)
    arrays: dict[str, np.ndarray] = {"layers": np.array(list(layers)), "images": np.asarray(images, np.int64)}
    arrays["labels"] = np.asarray(labels, np.int64)
    for name, a in zip(layers, acts):
        arrays[name], arrays[f"{name}.mean"], arrays[f"{name}.scale"] = encode(a)
    tmp = path.with_name(f".{path.name}{R.TMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    R.replace_atomically(tmp, path)
    return path


class StoredActivations:
    """One epoch's stored activations of one trial; layers are decoded on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._npz = np.load(path, allow_pickle=False)
        self.layers = [str(x) for x in self._npz["layers"]]
        self.images = self._npz["images"]  # test-set indices
        self.labels = self._npz["labels"]

    def layer(self, name: str) -> np.ndarray:
        z = self._npz[name]
        return decode(z, self._npz[f"{name}.mean"], self._npz[f"{name}.scale"])

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> StoredActivations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the tables --------------------------------------------------------------------------------
def _finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(a).all())


def dimensionality_rows(epoch: int, layers: Sequence[str], acts: Sequence[np.ndarray]) -> dict[str, list]:
    """One row per layer: components for 95% of the variance and the participation ratio (NaN for non-finite activations)."""
    rows: dict[str, list] = {c: [] for c in DIMENSIONALITY_COLUMNS.names}
    for name, a in zip(layers, acts):
        ok = _finite(a)
        pcs = pcs_for_variance(a, VARIANCE_FRACTION) if ok else None
        # At most min(U, N - 1) components exist (N images, centered): a width-free share of them
        most = max(1, min(a.shape[1], a.shape[0] - 1))
        values = (epoch, name, a.shape[1], a.shape[0], pcs, participation_ratio(a) if ok else float("nan"),
                  pcs / most if pcs is not None else float("nan"))  # fmt: skip
        for col, v in zip(rows, values):
            rows[col].append(v)
    return rows


def similarity_rows(a: StoredActivations, b: StoredActivations, epoch: int, reference: TrialSpec, pair: str) -> dict[str, list]:
    """CKA and PWCCA distance (weights from a) of every layer of a with the same layer of b."""
    if a.images.shape != b.images.shape or not np.array_equal(a.images, b.images):
        raise ValueError(f"{a.path} and {b.path} hold different test images; both trials must use the same represent_images")
    if a.layers != b.layers:
        raise ValueError(f"{a.path} and {b.path} hold different layers ({a.layers[:2]}... vs {b.layers[:2]}...)")
    rows: dict[str, list] = {c: [] for c in SIMILARITY_COLUMNS.names}
    for name in a.layers:
        x, y = a.layer(name), b.layer(name)
        ok = _finite(x) and _finite(y)
        values = (reference.trial_id, reference.seed, reference.alpha, pair, epoch, name, x.shape[1], x.shape[0],
                  linear_cka(x, y) if ok else float("nan"), pwcca_distance(x, y) if ok else float("nan"),
                  pwcca_distance_svcca(x, y) if ok else float("nan"))  # fmt: skip
        for col, v in zip(rows, values):
            rows[col].append(v)
    return rows


def pair_kind(spec: TrialSpec, reference: TrialSpec | None = None) -> str:
    """The pair a trial makes with its reference: regularized vs the unregularized trial of its own
    seed (or of another seed), or two unregularized seeds."""
    if spec.alpha == 0:
        return PAIRS[1]
    return PAIRS[2] if reference is not None and reference.seed != spec.seed else PAIRS[0]


def read_done(path: Path, keys: Sequence[str]) -> tuple[list[pa.Table], set[tuple]]:
    """A trial table written so far and the key tuples (e.g. epoch, or reference_id and epoch) it holds."""
    if not path.exists():
        return [], set()
    table = pq.read_table(path)
    return [table], set(zip(*(table[k].to_pylist() for k in keys)))


def append_rows(
    path: Path,
    tables: list[pa.Table],
    columns: pa.Schema,
    rows: dict[str, list],
    spec: TrialSpec,
    finish: Callable[[pa.Table], pa.Table] | None = None,
) -> None:
    """Add `rows` to the trial's table at `path` and rewrite it atomically (so a killed job resumes
    after the last write); `finish` makes the table written of the whole (e.g. adds metadata)."""
    tables.append(R.make_table(columns, rows, spec.row_fields(), R.trial_schema(spec)))
    table = R.concat(tables, promote=True)
    R.write_parquet(finish(table) if finish else table, path)


def compare_trials(folder: Path, references: Sequence[Path]) -> int:
    """Similarity rows of the trial in `folder` with each reference trial, at every epoch both stored
    and not yet in its similarity.parquet; returns the (reference, epoch) pairs added."""
    spec = TrialSpec.from_dict(R.read_json(folder / R.SPEC), where=str(folder / R.SPEC))
    path = folder / SIMILARITY
    tables, done = read_done(path, ["reference_id", "epoch"])
    mine = set(stored_epochs(folder))
    added = 0
    for ref_folder in references:
        reference = TrialSpec.from_dict(R.read_json(ref_folder / R.SPEC), where=str(ref_folder / R.SPEC))
        if reference.alpha != 0:
            raise UserError(f"{ref_folder}: a reference is an unregularized trial (alpha 0); this one has alpha {reference.alpha:g}")
        pair = pair_kind(spec, reference)
        for epoch in sorted(mine & set(stored_epochs(ref_folder))):
            if (reference.trial_id, epoch) in done:
                continue
            with StoredActivations(activation_path(folder, epoch)) as a, StoredActivations(activation_path(ref_folder, epoch)) as b:
                rows = similarity_rows(a, b, epoch, reference, pair)
            append_rows(path, tables, SIMILARITY_COLUMNS, rows, spec)
            added += 1
    return added


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m trainer.analysis.similarity_job", description=__doc__.split("\n\n")[0])
    p.add_argument("--trial", required=True, type=Path, help="the trial compared (its similarity.parquet grows)")
    p.add_argument("--against", required=True, type=Path, action="append", help="a reference trial's folder (repeat)")
    args = p.parse_args(argv)

    def body() -> int:
        for folder in [args.trial, *args.against]:
            if not (folder / R.SPEC).is_file():
                raise UserError(f"{folder}: not a trial folder (no spec.json)")
        with TrialLock(args.trial):
            added = compare_trials(args.trial, args.against)
        print(f"{args.trial.name}: compared {added} more (reference, epoch) pairs -> {args.trial / SIMILARITY}")
        return EXIT_DONE

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
