"""Ranadive et al.'s CKA between two networks: minibatch CKA with the unbiased HSIC on the flattened
outputs of every tracked block and of the output layer (trainer.analysis.representation.MinibatchCKA).

    minibatch_cka(model_a, model_b, data, batch_size=64, device)   -> {layer: CKA}, layers + "fc"
    python -m trainer.analysis.minibatch_cka_job --trial A --against B [--against C ...] [--batch-size 64] [--device D]

Both networks see the same test batches in eval mode (batch_size 64 as R+; the last, smaller batch
counts as one batch when it has at least 4 images, as torch_cka), on the images of the
representation job (trainer.analysis.similarity_job.image_subset). The command loads both kept checkpoints of
every epoch both trials kept and adds rows to A's `minibatch_cka.parquet`: the trial's fields,
then reference_id, reference_seed, reference_alpha, pair, epoch, layer, cka_batch_size, n_images,
cka_minibatch. It needs the networks, not the stored spatial means, so it runs with torch.
`orchestrator.represent --minibatch-cka` runs it for every pair; the collector summarises it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from trainer import results as R
from trainer.analysis.ablation_job import kept_epochs
from trainer.analysis.representation import MinibatchCKA
from trainer.analysis.similarity_job import MINIBATCH_CKA, append_rows, image_subset, images_for, pair_kind, read_done
from trainer.attempt import pick_device
from trainer.checkpoint import KEPT
from trainer.cli import EXIT_DONE, ArgumentParser, command
from trainer.data import Data, load_dataset
from trainer.errors import UserError
from trainer.lock import TrialLock
from trainer.models import TrackedNet, build_for
from trainer.registry import DATASETS
from trainer.spec import TrialSpec

FC = "fc"  # the output layer's name in the result
COLUMNS = pa.schema(
    [
        ("reference_id", pa.string()), ("reference_seed", pa.int64()), ("reference_alpha", pa.float64()), ("pair", pa.string()),
        ("epoch", pa.int64()), ("layer", pa.string()), ("cka_batch_size", pa.int64()), ("n_images", pa.int64()),
        ("cka_minibatch", pa.float64()),
    ]
)  # fmt: skip


def _flat_outputs(model: TrackedNet, x: torch.Tensor) -> list[np.ndarray]:
    """Each tracked block's raw output and the logits, flattened per image, as float64."""
    out, h = [], model.stem(x)
    for block in model.blocks:
        h = block(h)
        out.append(h.flatten(1).double().cpu().numpy())
    logits, _ = model(x)
    return [*out, logits.double().cpu().numpy()]


@torch.no_grad()
def minibatch_cka(
    model_a: TrackedNet, model_b: TrackedNet, data: Data, batch_size: int, device: torch.device, subset: torch.Tensor | None = None
) -> dict[str, float]:
    """Minibatch CKA of every tracked layer (and "fc") of two networks of the same architecture."""
    if model_a.block_names != model_b.block_names:
        raise ValueError("minibatch_cka compares networks with the same tracked layers")
    names = [*model_a.block_names, FC]
    acc = {name: MinibatchCKA() for name in names}
    model_a.eval(), model_b.eval()
    for x, _ in data.test_batches(batch_size, subset):
        if x.shape[0] < 4:  # the unbiased HSIC needs 4 images
            continue
        x = x.to(device)
        for name, a, b in zip(names, _flat_outputs(model_a, x), _flat_outputs(model_b, x)):
            acc[name].add(a, b)
    return {name: acc[name].value() for name in names}


def _load(spec: TrialSpec, folder: Path, epoch: int, device: torch.device) -> TrackedNet:
    model = build_for(spec.model, spec.dataset).to(device)
    model.load_state_dict(torch.load(folder / KEPT / f"epoch_{epoch:03d}.pt", map_location=device, weights_only=True)["model"])
    return model


def compare_minibatch(folder: Path, references: list[Path], batch_size: int | None = None, device_name: str | None = None) -> int:
    """Minibatch CKA rows of the trial in `folder` with each reference, at every epoch both kept and
    not yet in its minibatch_cka.parquet; returns the (reference, epoch) pairs added."""
    spec = TrialSpec.from_dict(R.read_json(folder / R.SPEC), where=str(folder / R.SPEC))
    batch_size = batch_size or spec.cka_batch_size
    device = pick_device(device_name or spec.device)
    info = DATASETS[spec.dataset]
    data = load_dataset(spec.dataset, spec.resolved_data_root(), device, **spec.data_options())
    subset = torch.from_numpy(image_subset(info.n_test, images_for(spec, info.n_test, not info.in_memory)))
    path = folder / MINIBATCH_CKA
    tables, done = read_done(path, ["reference_id", "epoch", "cka_batch_size"])
    added = 0
    for ref_folder in references:
        reference = TrialSpec.from_dict(R.read_json(ref_folder / R.SPEC), where=str(ref_folder / R.SPEC))
        if (reference.model, reference.dataset) != (spec.model, spec.dataset):
            raise UserError(f"{ref_folder}: a reference must be the same model on the same data set")
        for epoch in sorted(set(kept_epochs(folder)) & set(kept_epochs(ref_folder))):
            if (reference.trial_id, epoch, batch_size) in done:
                continue
            got = minibatch_cka(
                _load(spec, folder, epoch, device), _load(reference, ref_folder, epoch, device), data, batch_size, device, subset
            )
            rows: dict[str, list] = {c: [] for c in COLUMNS.names}
            for layer, value in got.items():
                values = (reference.trial_id, reference.seed, reference.alpha, pair_kind(spec, reference), epoch, layer,
                          batch_size, len(subset), value)  # fmt: skip
                for col, v in zip(rows, values):
                    rows[col].append(v)
            append_rows(path, tables, COLUMNS, rows, spec)
            added += 1
    return added


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m trainer.analysis.minibatch_cka_job", description=__doc__.split("\n\n")[0])
    p.add_argument("--trial", required=True, type=Path, help="the trial compared (its minibatch_cka.parquet grows)")
    p.add_argument("--against", required=True, type=Path, action="append", help="a reference trial's folder (repeat)")
    p.add_argument("--batch-size", type=int, default=None, help="images per minibatch (default: the trial's cka_batch_size, 64)")
    p.add_argument("--device", default=None, help="default: the trial's device field")
    args = p.parse_args(argv)

    def body() -> int:
        if args.batch_size is not None and args.batch_size < 4:
            raise UserError(f"--batch-size is {args.batch_size}; allowed: >= 4 (the unbiased HSIC needs 4 images)")
        for folder in [args.trial, *args.against]:
            if not (folder / R.SPEC).is_file():
                raise UserError(f"{folder}: not a trial folder (no spec.json)")
        with TrialLock(args.trial):
            added = compare_minibatch(args.trial, args.against, args.batch_size, args.device)
        print(f"{args.trial.name}: {added} more (reference, epoch) pairs -> {args.trial / MINIBATCH_CKA}")
        return EXIT_DONE

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
