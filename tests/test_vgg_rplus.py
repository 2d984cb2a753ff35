"""VGG16 in Ranadive et al.'s CIFAR-10 form, and torchvision's unmodified vgg16 by name.

`reference_rplus_cifar` is written from Ranadive et al.'s `trainer_reg_cifar10.py` (with
`forward_grad` of their `class_selectivity_v3.py`), small and in its structure: each tracked
output's per-channel spatial mean, summed per class over the batch (a dict per stage, class and
layer), CSI over the present classes with eps 1e-6, all units of a stage pooled, and the term the
mean over stages 1-4 (`if layer_k not in (5, 6)`). Their code is not copied here; the test checks
that the spec fields of grids/cifar10-vgg16-onset.yaml give the same value and gradient.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.grid import load_grid
from trainer.loop import si_form
from trainer.models import build_model
from trainer.selectivity import batch_selectivity
from trainer.spec import SpecError, TrialSpec

REPO = Path(__file__).resolve().parent.parent
RPLUS = {"model": "vgg16", "dataset": "cifar10", "si_pooling": "stages", "si_class_stat": "sum", "si_skip_stages": [5, 6]}


def reference_rplus_cifar(feats: list[torch.Tensor], names: list[str], targets: list[int]) -> torch.Tensor:
    """R+'s regularization_term for one batch: feats are the tracked outputs ([N, C, H, W] or [N, U])."""
    epsilon = 1e-6
    stage_of = {name: int(name.split(".")[0][len("stage") :]) for name in names}
    class_activations: dict[int, dict[int, dict[int, torch.Tensor]]] = {s: {} for s in range(1, 7)}
    counter: dict[int, int] = {}
    for name, v in zip(names, feats):
        index = stage_of[name]
        num = counter.get(index, 0)
        counter[index] = num + 1
        activations = torch.mean(v.reshape(v.size(0), v.size(1), -1), dim=2)
        for i, activation in enumerate(activations):
            per_class = class_activations[index].setdefault(targets[i], {})
            per_class[num] = per_class[num] + activation.unsqueeze(0) if num in per_class else activation.unsqueeze(0)
    layer_selectivity = []
    for layer_k in class_activations:
        if layer_k in (5, 6):
            continue
        unit_selectivity: list[torch.Tensor] = []
        for bottleneck_k in class_activations[layer_k][targets[0]]:
            table = torch.cat([class_activations[layer_k][c][bottleneck_k] for c in sorted(class_activations[layer_k])], dim=0).t()
            u_max, _ = torch.max(table, dim=1)
            u_minus_max = (torch.sum(table, dim=1) - u_max) / (table.shape[1] - 1)
            unit_selectivity += list((u_max - u_minus_max) / (u_max + u_minus_max + epsilon))
        layer_selectivity.append(sum(unit_selectivity) / len(unit_selectivity))
    return sum(layer_selectivity) / len(layer_selectivity)


def _outputs(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each tracked block's raw output (what R+'s feature extractor returns), by running the blocks."""
    out, h = [], net.stem(x)
    for block in net.blocks:
        h = block(h)
        out.append(h)
    return out


def test_the_grid_is_in_rplus_form_and_says_so() -> None:
    grid = load_grid(REPO / "grids" / "cifar10-vgg16-onset.yaml")
    for spec in grid.specs:
        assert (spec.si_pooling, spec.si_class_stat, spec.si_skip_stages) == ("stages", "sum", (5, 6))
        form = si_form(spec)
        assert form is not None and form.eps == 1e-6
    assert "si_skip_stages: [5, 6]" in (REPO / "grids" / "cifar10-vgg16-onset.yaml").read_text()


@pytest.mark.slow  # a VGG16 forward and backward at 32 px
def test_rplus_vgg16_regularizer_matches_their_cifar_code_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    net = build_model("vgg16", 10, 3, 32).double().train()
    x = torch.randn(12, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 1, 0, 5, 5, 7, 1, 2, 9])  # classes absent and repeated
    form = si_form(TrialSpec.from_dict(RPLUS))
    _, feats = net(x, capture=True)
    assert feats is not None and all(f.dtype == torch.float64 for f in feats)  # float64 capture (no float32 head input)
    ours = batch_selectivity(feats, labels, 10, form=form, layer_names=net.block_names)
    params = list(net.parameters())
    g_ours = torch.autograd.grad(ours, params, allow_unused=True)
    want = reference_rplus_cifar(_outputs(net, x), net.block_names, labels.tolist())
    g_want = torch.autograd.grad(want, params, allow_unused=True)
    assert ours.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-15)
    for a, b in zip(g_ours, g_want):
        if b is None:  # the classifier and stage 5 take no gradient from the term
            assert a is None or not a.any()
        else:
            assert a is not None and torch.allclose(a, b, rtol=1e-9, atol=1e-15)
    assert sum(b is None for b in g_want) > 0  # stages 5-6 left out: their weights get nothing


def test_si_skip_stages_validation() -> None:
    for bad in ([0], [7], [2, 2], [3, 1], [], [1, 2, 3, 4, 5, 6]):
        with pytest.raises(SpecError, match="field 'si_skip_stages' is .*allowed: null, or increasing stage numbers of vgg16"):
            TrialSpec.from_dict({**RPLUS, "si_skip_stages": bad})
    with pytest.raises(SpecError, match="leave at least one stage"):
        TrialSpec(model="resnet20", si_skip_stages=(1, 2), si_skip_last_stage=True)
    assert TrialSpec(si_skip_stages=(3,)).trial_id != TrialSpec().trial_id


@pytest.mark.slow  # builds two 138 M-parameter networks
def test_vgg16_torchvision_is_torchvisions_network() -> None:
    import torchvision

    torch.manual_seed(3)
    ours = build_model("vgg16_torchvision", 10, 3, 32)
    torch.manual_seed(3)
    tv = torchvision.models.vgg16(weights=None)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters()) == 138_357_544
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), tv.parameters()))  # same init for the seed
    ours.eval(), tv.eval()
    x = torch.randn(2, 3, 32, 32)
    logits, feats = ours(x, capture=True)
    assert logits.shape == (2, 1000) and torch.equal(logits, tv(x))
    assert feats is not None and [f.shape[1] for f in feats] == ours.units_per_layer()
