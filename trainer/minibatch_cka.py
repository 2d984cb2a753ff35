"""Ranadive et al.'s CKA between two networks: minibatch CKA with the unbiased HSIC on the flattened
outputs of every tracked block and of the output layer (trainer.representation.MinibatchCKA).

    minibatch_cka(model_a, model_b, data, batch_size=64, device)   -> {layer: CKA}, layers + "fc"

Both networks see the same test batches in eval mode (batch_size 64 as R+; the last, smaller batch
counts as one batch when it has at least 4 images, as torch_cka). Not yet wired into the
representation job (docs/analysis.md): the stored activations are spatial means, so this measure
needs both checkpoints loaded at once.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.data import Data
from trainer.models import TrackedNet
from trainer.representation import MinibatchCKA

FC = "fc"  # the output layer's name in the result


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
