"""GPU-hour estimate of a plan, printed by `--dry-run`; a rough guide, with its assumptions shown.

cost(trial) = (epochs x n_train + evaluations x n_test / 3) / throughput x (1.10 if alpha != 0)
    evaluations: epoch 0, every epoch, the mid-epoch ones, and the ablation passes (per kept
                 checkpoint: stages x nonzero fractions x (top-k + random draws), plus one)
    throughput: training images/s of one trial on one H100, from the published anchors in
                ../shared/NOTES.md (eager PyTorch, bf16); evaluation costs a third of a
                training image (forward only); the regularizer costs at most 10% more.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.spec import TrialSpec

# (model, dataset) -> training images/s on one H100; (train, test) sizes of each data set.
H100_IMAGES_PER_S = {
    ("resnet20", "digits"): 30_000.0,  # launch bound like CIFAR: tiny images do not go faster
    ("resnet20", "cifar10"): 30_000.0,  # CIFAR ResNet-18 eager: 23.8k img/s on an A100; ResNet20 is 13x lighter
    ("resnet18", "tinyimagenet"): 10_000.0,  # ~4x the FLOPs of CIFAR ResNet-18 (64x64, stride-1 stem)
    ("resnet50", "imagenet"): 3_000.0,  # NVIDIA's examples: 2,470 img/s per A100 with AMP; MLPerf H100: ~7k
}
DEFAULT_IMAGES_PER_S = 3_000.0  # any other pairing: assume ResNet50-class cost
DATASET_SIZES = {"digits": (1437, 360), "cifar10": (50_000, 10_000), "tinyimagenet": (100_000, 10_000), "imagenet": (1_281_167, 50_000)}
REGULARIZER_OVERHEAD = 1.10
STAGES = {"resnet20": 3, "resnet18": 4, "resnet50": 4}


@dataclass(frozen=True)
class Estimate:
    gpu_hours: float
    per_trial_hours: dict[str, float]

    def explain(self) -> str:
        return (
            "estimate: (epochs x train images + evaluations x test images / 3) / H100 images/s per (model, dataset) "
            f"{ {f'{m}/{d}': int(v) for (m, d), v in H100_IMAGES_PER_S.items()} }, x1.10 when alpha != 0"
        )


def trial_hours(spec: TrialSpec) -> float:
    n_train, n_test = DATASET_SIZES[spec.dataset]
    speed = H100_IMAGES_PER_S.get((spec.model, spec.dataset), DEFAULT_IMAGES_PER_S)
    evals = spec.epochs + 1  # epoch 0 and after every epoch
    if spec.eval_every_steps > 0:  # mid-epoch evaluations of the early dynamics
        steps = n_train // spec.batch_size
        evals += min(spec.eval_until_epoch, spec.epochs) * len(range(spec.eval_every_steps, steps, spec.eval_every_steps))
    if spec.ablation_fractions is not None:  # per kept checkpoint: stages x k x (top-k + draws) test passes
        ks = sum(1 for f in spec.ablation_fractions if f > 0)
        evals += len(spec.kept_epochs()) * (1 + STAGES.get(spec.model, 4) * ks * (1 + spec.ablation_draws))
    seconds = (spec.epochs * n_train + evals * n_test / 3) / speed
    if spec.alpha != 0:
        seconds *= REGULARIZER_OVERHEAD
    return seconds / 3600


def estimate(specs: list[TrialSpec] | tuple[TrialSpec, ...]) -> Estimate:
    per = {s.trial_id: trial_hours(s) for s in specs}
    return Estimate(sum(per.values()), per)
