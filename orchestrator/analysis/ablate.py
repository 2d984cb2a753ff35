"""Channel-ablation job over a finished sweep: `python -m orchestrator.ablate results/<sweep>`.

    --fractions 0 0.125 0.25 0.5 0.75 1   fractions of each stage's channels to zero (the default)
    --counts 8 16 32                       absolute channel counts (above a stage's width: left out)
    --count-steps 15 40                    Ranadive et al.'s k: range(0, C/2, 15) and range(C/2, C+1, 40)
    --draws 3                              random draws per (epoch, stage, k)
    --random-masks fixed                   fixed | per_batch (a new mask every batch, Ranadive et al.) | both
    --replace                              ablations measured with another plan: measure them anew
    --max-parallel N                       N worker processes (default: one)

Without plan flags each trial is ablated with its own plan (its ablation_* fields, else the
defaults above); each flag given replaces that part. Runs `trainer.analysis.ablation_job` (see
trainer/analysis/ablation.py) in a worker process on every done trial that kept checkpoints and
lacks some of their ablations: a trial with nothing left to ablate starts no worker. Each trial's
ablations.parquet grows epoch by epoch, so a killed job resumes where it stopped, and records its
plan: a trial ablated with another plan is one line before anything runs (unless --replace), never
silently left as it was. Then `python -m orchestrator.collect` adds the ablation curves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.analysis.pool import check_sweep, check_trial_devices, run_pool, to_do, trial_specs
from orchestrator.analysis.represent import warn_missing_kept
from orchestrator.folders import scan
from trainer.analysis.ablation_job import KEPT, add_plan_arguments, epochs_to_ablate, plan_arguments, plan_for, plan_overrides
from trainer.cli import ArgumentParser, cli
from trainer.errors import UserError

ABLATE_LOG = "ablate.log"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path)
    add_plan_arguments(p)
    p.add_argument("--max-parallel", type=int, default=1)
    args = p.parse_args(argv)
    overrides = plan_overrides(args)
    check_sweep(args.sweep, args.max_parallel)
    folders = [s.folder for s in scan(args.sweep).values() if s.state == "done" and (s.folder / KEPT).is_dir()]
    if not folders:
        raise UserError(f"{args.sweep}: no done trial with kept checkpoints ({KEPT}/) to ablate")
    specs = trial_specs(folders)
    check_trial_devices(specs)
    warn_missing_kept(folders)
    todo = to_do(folders, lambda i: epochs_to_ablate(folders[i], plan_for(specs[i], overrides), args.replace))
    extra = plan_arguments(overrides) + (["--replace"] if args.replace else [])
    failed = run_pool("trainer.analysis.ablation_job", [(f, extra) for f in todo], args.max_parallel, "ablate", ABLATE_LOG)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    more = f"; {len(failed)} failed, see above" if failed else ""
    already = f" ({len(folders) - len(todo)} of {len(folders)} had nothing left to ablate)" if len(todo) < len(folders) else ""
    print(f"{args.sweep}: ablated {len(todo) - len(failed)} trials{already}{more}; next: python -m orchestrator.collect {args.sweep}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli(main))
