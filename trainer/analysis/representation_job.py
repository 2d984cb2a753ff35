"""Representation job of one trial: what its layers represent at each kept checkpoint.

    python -m trainer.analysis.representation_job --trial results/<sweep>/trials/<id> [--device D]

This command (also run at the end of every trial with `represent: true`, in the same attempt,
on the training's data and device, so it runs on every backend) loads each kept checkpoint
(`<trial>/checkpoints/epoch_NNN.pt`), runs the network in eval mode over a fixed subset of the
test set (trainer.analysis.similarity_job.image_subset: the same images for every trial of a data set; all up
to 10,000, 5,000 of ImageNet's, or `represent_images`) and takes every tracked layer's units as
for CSI (each channel's spatial mean; a fully connected layer's values). Per epoch it stores them
(`<trial>/activations/epoch_NNN.npz`, float16, N x U x 2 bytes) and adds the layers'
dimensionality (principal components for 95% of the variance, participation ratio, from the
float32 activations in float64) to `<trial>/dimensionality.parquet`. Both are written after each
epoch, atomically, so a killed job resumes at the first epoch not in the table.

Pairs of trials are compared from the stored activations, with no GPU, data set or torch:
`python -m trainer.analysis.similarity_job --trial <a> --against <b>` (CKA and PWCCA distance into
`<a>/similarity.parquet`). `python -m orchestrator.analysis.represent results/<sweep>` runs both over a
sweep and chooses the pairs. Exit codes as trainer.run: 0 done, 2 user mistake, 75 busy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from trainer import results as R
from trainer.analysis.ablation_job import finished_trial
from trainer.analysis.similarity_job import (
    DIMENSIONALITY,
    DIMENSIONALITY_COLUMNS,
    activation_path,
    append_rows,
    dimensionality_rows,
    image_subset,
    images_for,
    read_done,
    save_activations,
)
from trainer.attempt import pick_device
from trainer.cli import EXIT_DONE, ArgumentParser, command
from trainer.data import Data, eval_batch_size, load_dataset
from trainer.errors import UserError
from trainer.kept import load_kept
from trainer.lock import TrialLock
from trainer.loop import autocast
from trainer.models import TrackedNet, build_for
from trainer.registry import DATASETS
from trainer.spec import TrialSpec


@torch.no_grad()
def layer_activations(
    model: TrackedNet, data: Data, subset: torch.Tensor | None, batch_size: int, device: torch.device
) -> tuple[list[np.ndarray], np.ndarray]:
    """Every tracked layer's units [N, U] (float32) on the test images `subset` (None: all), and their labels."""
    model.eval()
    parts: list[list[np.ndarray]] = [[] for _ in model.block_names]
    labels = []
    for x, y in data.test_batches(batch_size, subset):
        with autocast(device):
            _, feats = model(x, capture=True)
        assert feats is not None
        for part, f in zip(parts, feats):
            part.append(f.float().cpu().numpy())
        labels.append(y.cpu().numpy())
    return [np.concatenate(p) for p in parts], np.concatenate(labels)


def represent_trial(folder: Path, device_name: str | None = None, require_done: bool = True, data: Data | None = None) -> int:
    """Activations and dimensionality of every kept checkpoint not yet in dimensionality.parquet; returns epochs added.

    `require_done=False`: called at the end of training, in the same attempt, with the training's
    `data` (a streamed validation set decoded once serves the whole job).
    """
    spec, epochs = finished_trial(folder, require_done, "analyse")
    path = folder / DIMENSIONALITY
    tables, done = read_done(path, ["epoch"])
    todo = [e for e in epochs if (e,) not in done or not activation_path(folder, e).exists()]
    if not todo:
        return 0
    device = pick_device(device_name or spec.device)
    if data is None:
        data = load_dataset(spec.dataset, spec.resolved_data_root(), device, **spec.data_options())
    images = image_subset(data.n_test, images_for(spec, data.n_test, streamed=not DATASETS[spec.dataset].in_memory))
    subset = None if len(images) == data.n_test else torch.from_numpy(images)
    model = build_for(spec.model, spec.dataset).to(device)
    batch = eval_batch_size(data, spec.batch_size, device)
    tables = [t.filter(pa.array(~np.isin(t["epoch"].to_numpy(), todo))) for t in tables]  # an epoch redone replaces its rows
    for epoch in todo:
        state = load_kept(folder, epoch, device)
        model.load_state_dict(state["model"])
        acts, labels = layer_activations(model, data, subset, batch, device)
        save_activations(folder, epoch, model.block_names, acts, images, labels)  # before its rows: rows say the file is there
        append_rows(path, tables, DIMENSIONALITY_COLUMNS, dimensionality_rows(epoch, model.block_names, acts), spec)
    return len(todo)


def represent_if_asked(spec: TrialSpec, folder: Path, data: Data | None = None) -> None:
    """The trial's own representation job (field represent), in the same attempt as its training."""
    if spec.represent:
        represent_trial(folder, spec.device, require_done=False, data=data)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m trainer.analysis.representation_job", description=__doc__.split("\n\n")[0])
    p.add_argument("--trial", required=True, type=Path, help="a finished trial's folder")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    def body() -> int:
        if not (args.trial / R.SPEC).is_file():
            raise UserError(f"{args.trial}: not a trial folder (no spec.json)")
        with TrialLock(args.trial):
            added = represent_trial(args.trial, args.device)
        print(f"{args.trial.name}: {added} more epochs -> {args.trial / DIMENSIONALITY}")
        return EXIT_DONE

    return command(body)


if __name__ == "__main__":
    sys.exit(main())
