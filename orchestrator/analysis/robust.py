"""Robustness job over a finished sweep: `python -m orchestrator.robust results/<sweep>`.

    --all-kept --images N --epsilons E ... --pgd-steps S --source auto|official|generated
    --gradient-images N --gradient-units U    as trainer.analysis.robustness_job (its docstring has the defaults)
    --replace                                 trials measured with other settings: measure them anew
    --max-parallel N                          N worker processes (default: one)
    --device D                                default: each trial's device field

Runs `python -m trainer.analysis.robustness_job` (corruptions, FGSM / PGD, the dimensionality of the
change, input-unit gradients; docs/analysis.md) on every done trial that lacks some of it, in a
pool of worker processes (orchestrator.runner.WorkerPool). Each trial's files grow piece by piece,
so a killed job resumes where it stopped, and a trial with nothing left to measure costs a read of
its files here and starts no worker. The files record the settings they were measured with: a
trial measured with other settings is one line before anything runs (unless --replace), never
silently left as it was. Then `python -m orchestrator.collect results/<sweep>` adds the
robustness tables and figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.analysis.pool import check_sweep, check_trial_devices, run_pool, to_do, trial_specs
from orchestrator.folders import scan
from trainer.analysis.corruption_sets import official_set
from trainer.analysis.robustness_job import add_plan_arguments, plan_arguments, plan_for, plan_overrides, to_measure
from trainer.cli import ArgumentParser, cli
from trainer.errors import UserError
from trainer.spec import TrialSpec

ROBUST_LOG = "robust.log"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.robust", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path)
    add_plan_arguments(p)
    p.add_argument("--max-parallel", type=int, default=1)
    p.add_argument("--device", default=None, help="device of the job (default: each trial's device field)")
    args = p.parse_args(argv)
    overrides = plan_overrides(args)
    check_sweep(args.sweep, args.max_parallel, args.device)
    folders = [s.folder for s in scan(args.sweep).values() if s.state == "done"]
    if not folders:
        raise UserError(f"{args.sweep}: no done trial to measure; see python -m orchestrator.status {args.sweep}")
    specs = trial_specs(folders)
    if args.device is None:
        check_trial_devices(specs)
    if overrides.get("source") == "official":
        _check_official(specs)
    todo = to_do(folders, lambda i: len(to_measure(folders[i], specs[i], plan_for(specs[i], overrides), args.replace).work))
    extra = plan_arguments(overrides) + (["--replace"] if args.replace else []) + (["--device", args.device] if args.device else [])
    failed = run_pool("trainer.analysis.robustness_job", [(f, extra) for f in todo], args.max_parallel, "robust", ROBUST_LOG)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    already = f" ({len(folders) - len(todo)} of {len(folders)} had nothing left to measure)" if len(todo) < len(folders) else ""
    print(f"{args.sweep}: measured {len(todo) - len(failed)} trials{already}; next: python -m orchestrator.collect {args.sweep}")
    return 1 if failed else 0


def _check_official(specs: list[TrialSpec]) -> None:
    """--source official: every trial's data set has its published corrupted copy under its data root."""
    for dataset, root in sorted({(spec.dataset, spec.resolved_data_root()) for spec in specs}):
        if official_set(dataset, Path(root).expanduser()) is None:
            raise UserError(f"--source official: no CIFAR-10-C/ or Tiny-ImageNet-C/ for dataset '{dataset}' under {root}; "
                            "allowed: --source generated or auto")  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli(main))
