"""GPU-hour estimate of a plan, printed by `--dry-run`: a guide, with every assumption shown.

per trial:
    train seconds  = epochs x n_train / min(GPU images/s, loader images/s) x (1.10 if alpha != 0)
    eval seconds   = passes x n_test / (3 x GPU images/s)  +  one decode of the test set (streamed sets)
    passes         = epoch 0 and every epoch + the mid-epoch evaluations + the ablation passes
                     (per kept checkpoint and stage: none for k = 0, one for a whole stage, top-k and
                     every random draw for any other k; trainer.analysis.ablation_plan.AblationPlan.passes)
                     + the robustness job's passes when `robust: true` (robust_passes)

GPU images/s: training throughput of one trial on one H100, eager PyTorch with bf16 and
channels_last, from published anchors (below); evaluation is forward only (about a third of a
training image) and reads the test set from the copy decoded once per job. Loader images/s, for
sets streamed from image files (ImageNet): the CPUs the profile gives a trial times what one core
delivers with the trial's loader (measured by `python -m benchmarks.imagenet_loader`, see
docs/imagenet-input.md); in-memory sets never wait for a loader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from trainer.analysis.ablation_plan import AblationPlan, ablation_plan_of
from trainer.registry import DATASETS, MODELS
from trainer.spec import TrialSpec

# (model, dataset) -> training images/s of one trial on one H100.
H100_IMAGES_PER_S = {
    ("resnet20", "digits"): 30_000.0,  # launch bound like CIFAR: tiny images do not go faster
    ("resnet20", "cifar10"): 30_000.0,  # CIFAR ResNet-18 eager: 23.8k img/s on an A100; ResNet20 is 13x lighter
    ("resnet18", "tinyimagenet"): 10_000.0,  # ~4x the FLOPs of CIFAR ResNet-18 (64x64, stride-1 stem)
    ("resnet50", "imagenet"): 3_000.0,  # NVIDIA's PyTorch examples: 2,470 img/s per A100 with AMP; MLPerf H100: ~7k
    # By FLOPs (multiply-adds per image) against the conservative ResNet-50 anchor (4.1 G):
    ("resnet18", "imagenet"): 6_800.0,  # 1.8 G: 3,000 x 4.1 / 1.8
    ("resnet34", "imagenet"): 3_400.0,  # 3.6 G: 3,000 x 4.1 / 3.6
    ("resnet50", "tinyimagenet"): 2_300.0,  # 3x3 stem, no max-pool: stage 1 at 64x64, not 56x56: ~5.2 G
    ("vgg16", "cifar10"): 25_000.0,  # 0.33 G (convs 0.31, fc1 on the 1x1 map 0.02): 37k by FLOPs; held under ResNet20's 30k launch bound
}
DEFAULT_IMAGES_PER_S = 3_000.0  # any other pairing: assume ResNet-50-class cost
REGULARIZER_OVERHEAD = 1.10
EVAL_SPEEDUP = 3.0  # forward only
# Images/s one CPU core feeds a GPU with, per loader (2-core VM, generated ImageNet-size JPEGs):
# "dali" is the CPU side when the GPU decodes (reading bytes, crop windows); "torchvision" decodes
# and crops on the CPU. auto is dali on a GPU when DALI is installed: assumed here.
LOADER_IMAGES_PER_CORE = {"dali": 6_100.0, "nvjpeg": 6_100.0, "torchvision": 377.0, "auto": 6_100.0}


@dataclass(frozen=True)
class TrialCost:
    train_hours: float
    eval_hours: float
    passes: int  # test-set evaluations of the trial
    loader_bound: bool  # the loader, not the GPU, limits training
    workload: tuple[str, str] = ("", "")  # (model, dataset): which throughput was assumed

    @property
    def hours(self) -> float:
        return self.train_hours + self.eval_hours


@dataclass(frozen=True)
class Estimate:
    gpu_hours: float
    per_trial: dict[str, TrialCost]
    cpus_per_trial: int

    def explain(self) -> str:
        passes = sorted({c.passes for c in self.per_trial.values()})
        bound = sum(c.loader_bound for c in self.per_trial.values())
        shown = ", ".join(map(str, passes[:4])) + (" ..." if len(passes) > 4 else "")
        return (
            f"test-set passes per trial: {shown}; {bound} of {len(self.per_trial)} trials loader-bound at "
            f"{self.cpus_per_trial} CPUs per trial; H100 train images/s "
            f"{ {f'{m}/{d}': int(_images_per_s(m, d)) for m, d in sorted({c.workload for c in self.per_trial.values()})} }, "
            f"evaluation x{EVAL_SPEEDUP:g}, "
            f"x{REGULARIZER_OVERHEAD} when alpha != 0 (orchestrator/estimate.py)"
        )


def ablation_plan(spec: TrialSpec) -> AblationPlan | None:
    if not spec.ablates():
        return None
    return ablation_plan_of(spec)


def evaluation_passes(spec: TrialSpec) -> tuple[int, float]:
    """Test-set passes of one trial as it will run (epoch evaluations, mid-epoch ones, ablations),
    and their cost in passes over the whole test set (ablations may use a subset of it)."""
    data = DATASETS[spec.dataset]
    passes = spec.epochs + 1  # epoch 0 and after every epoch
    if spec.eval_every_steps > 0:
        steps = data.n_train // spec.batch_size
        passes += min(spec.eval_until_epoch, spec.epochs) * len(range(spec.eval_every_steps, steps, spec.eval_every_steps))
    full: float = passes
    plan = ablation_plan(spec)
    if plan is not None:
        ablation = len(spec.kept_epochs()) * plan.passes(MODELS[spec.model].stage_widths)
        passes += ablation
        full += ablation * min(plan.images or data.n_test, data.n_test) / data.n_test
    if spec.robust:
        extra = robust_passes(spec, data.n_test, _layer_units(spec.model))
        passes += round(extra)
        full += extra
    return passes, full


def robust_passes(spec: TrialSpec, n_test: int, layer_units: list[int]) -> float:
    """The robustness job (trainer.analysis.robustness_job, its defaults) in forward passes over the whole test set.

    A backward pass costs about two forward ones. Corruptions: 75 full passes, plus the analysed
    subset's units for each. Attacks on the subset, per epsilon: FGSM 1 + 2 + 1, PGD 10 x (1 + 2 + 1) + 1,
    and the units of the perturbed images. Gradients: one backward per measured unit (at most 32 per layer)
    over 100 images.
    """
    subset = min(spec.robust_images or 1000, n_test) / n_test
    epsilons = 6  # the default grid's radii above 0
    corruptions = 75 * (1 + subset)
    attacks = epsilons * ((4 + 1) + (10 * 4 + 1 + 1)) * subset
    gradients = sum(min(u, 32) for u in layer_units) * 3 * min(100, n_test) / n_test
    return corruptions + attacks + gradients


def _layer_units(model: str) -> list[int]:
    info = MODELS[model]
    return [w for w, n in zip(info.stage_widths, info.blocks_per_stage) for _ in range(n)]


def trial_cost(spec: TrialSpec, cpus: int) -> TrialCost:
    data = DATASETS[spec.dataset]
    gpu = _images_per_s(spec.model, spec.dataset)
    loader = float("inf") if data.in_memory else max(cpus, 1) * LOADER_IMAGES_PER_CORE[spec.loader]
    train = spec.epochs * data.n_train / min(gpu, loader) * (REGULARIZER_OVERHEAD if spec.alpha != 0 else 1.0)
    passes, full = evaluation_passes(spec)
    evaluate = full * data.n_test / (EVAL_SPEEDUP * gpu) + (0 if data.in_memory else data.n_test / loader)
    return TrialCost(train / 3600, evaluate / 3600, passes, loader < gpu, (spec.model, spec.dataset))


def _images_per_s(model: str, dataset: str) -> float:
    return H100_IMAGES_PER_S.get((model, dataset), DEFAULT_IMAGES_PER_S)


def estimate(specs: list[TrialSpec] | tuple[TrialSpec, ...], cpus_per_trial: int | None = None) -> Estimate:
    """GPU-hours of `specs`, each trial fed by `cpus_per_trial` cores (default: all of this machine's)."""
    cpus = cpus_per_trial or os.cpu_count() or 1
    per = {s.trial_id: trial_cost(s, cpus) for s in specs}
    return Estimate(sum(c.hours for c in per.values()), per, cpus)
