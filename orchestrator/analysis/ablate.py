"""Channel-ablation job over a finished sweep: `python -m orchestrator.ablate results/<sweep>`.

    --fractions 0 0.125 0.25 0.5 0.75 1   fractions of each stage's channels to zero (the default)
    --counts 8 16 32                       absolute channel counts (above a stage's width: left out)
    --count-steps 15 40                    Ranadive et al.'s k: range(0, C/2, 15) and range(C/2, C+1, 40)
    --draws 3                              random draws per (epoch, stage, k)
    --random-masks fixed                   fixed | per_batch (a new mask every batch, Ranadive et al.) | both
    --max-parallel N                       N worker processes (default: in this process)

Runs `trainer.analysis.ablation_job` (see trainer/analysis/ablation.py) on every done trial that kept checkpoints and
lacks some of their ablations; each trial's ablations.parquet grows epoch by epoch, so a killed
job resumes where it stopped. Then `python -m orchestrator.collect` adds the ablation curves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.analysis.pool import check_sweep, check_trial_devices, run_pool, trial_specs
from orchestrator.analysis.represent import warn_missing_kept
from orchestrator.folders import scan
from trainer.analysis.ablation_job import KEPT, add_plan_arguments, plan_from_arguments
from trainer.cli import ArgumentParser, cli
from trainer.errors import UserError

ABLATE_LOG = "ablate.log"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path)
    add_plan_arguments(p)
    p.add_argument("--max-parallel", type=int, default=1)
    args = p.parse_args(argv)
    plan = plan_from_arguments(args)
    check_sweep(args.sweep, args.max_parallel)
    folders = [s.folder for s in scan(args.sweep).values() if s.state == "done" and (s.folder / KEPT).is_dir()]
    if not folders:
        raise UserError(f"{args.sweep}: no done trial with kept checkpoints ({KEPT}/) to ablate")
    check_trial_devices(trial_specs(folders))
    warn_missing_kept(folders)
    extra = ["--fractions", *map(str, plan.fractions)] if plan.fractions else []
    extra += ["--counts", *map(str, plan.counts)] if plan.counts else []
    extra += ["--count-steps", *map(str, plan.count_steps)] if plan.count_steps else []
    extra += ["--draws", str(plan.draws), "--random-masks", plan.random_masks]
    failed = run_pool("trainer.analysis.ablation_job", [(f, extra) for f in folders], args.max_parallel, "ablate", ABLATE_LOG)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    more = f"; {len(failed)} failed, see above" if failed else ""
    print(f"{args.sweep}: ablated {len(folders) - len(failed)} trials{more}; next: python -m orchestrator.collect {args.sweep}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli(main))
