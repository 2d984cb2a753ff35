"""Run a grid: `python -m orchestrator.sweep --grid grids/digits.yaml [--backend local|ray|slurm]`.

    --cluster cluster_configs/<profile>.yaml   resources of the backend (its `backend` key picks it)
    --results DIR                              results root (default ./results); the sweep is DIR/<grid name>
    --dry-run                                  print the trials, the groups and a GPU-hour estimate; write nothing
    --max-parallel N                           local backend: N worker processes
    --retry-failed                             give failed trials (not diverged ones) another round of attempts
    --fuse K                                   trials per fused group (default: the profile's, 16); 1: each alone

The steps, each in its own module: load the profile and the grid (orchestrator.profiles,
orchestrator.grid) -> read the trial folders (orchestrator.folders) and plan what is not done
(orchestrator.plan) -> pack trials into fused groups (orchestrator.pack) -> check everything
that can fail the launch (orchestrator.preflight) -> write the trial folders (orchestrator.prepare)
-> the backend runs the groups (orchestrator.backends: local, ray, slurm) -> the trial folders
say how it went.

Only what is not done runs; a finished trial never runs twice (each trial folder is locked
while it runs, so two launchers on one sweep share the work). Everything is validated (grid,
profile, data, the device on this machine for the local backend, room on the results disk, the
engine's own checks; orchestrator.preflight, in one documented order) before the first file is
written. Trial folders whose spec.json lies are repaired from the grid
(orchestrator.prepare.repair_specs). Exit code 0 when every trial of the
grid is done (or submitted, for engines that do not wait), 1 when some failed, could not run, or
are still running in other processes (another launcher, or the orphaned workers of a killed
one: the summary counts them as running), 2 for a user mistake (one line, argument errors too), 3
when an engine that does not wait (SLURM without `wait`) left trials unsubmitted under a submit
limit: run the same command again to top up, until it exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from orchestrator.backends import backend_for
from orchestrator.cancel import clear_request
from orchestrator.estimate import estimate
from orchestrator.folders import check_results_root, scan, sweep_dir, trial_folder, trial_folders
from orchestrator.grid import Grid, load_grid
from orchestrator.pack import pack
from orchestrator.plan import Plan, make_plan
from orchestrator.preflight import preflight
from orchestrator.prepare import prepare, record_grid, repair_specs, set_aside_damaged
from orchestrator.profiles import BACKENDS, LIMITS, Profile, default_profile, load_profile
from orchestrator.sweep_lock import launching
from trainer.cli import EXIT_DONE, EXIT_UNFINISHED, ArgumentParser, cli
from trainer.errors import ProfileError, UserError
from trainer.status import OUT_OF_MEMORY

MAX_PARALLEL = 1024
MAX_FUSE = int(LIMITS["fuse"].hi)  # the profile key's bound
EXIT_UNSUBMITTED = 3  # submitted what the cluster took; the rest waits for the next run of the same command


def _path(text: str) -> Path:
    # `--results=~/runs`: the shell leaves a ~ after `=` as it is; a folder named "~" is never meant
    return Path(text).expanduser()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m orchestrator.sweep", description="Run a YAML grid of trials.")
    p.add_argument("--grid", required=True, type=_path)
    p.add_argument("--backend", choices=BACKENDS, help="default: the profile's backend, else local")
    p.add_argument("--cluster", type=_path, help="cluster profile (cluster_configs/...yaml)")
    p.add_argument("--results", type=_path, default=Path("results"))
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--max-parallel", type=int, help="local backend: worker processes (overrides the profile)")
    p.add_argument("--retry-failed", action="store_true")
    p.add_argument("--fuse", type=int, metavar="K", help="trials per fused group (overrides the profile's 'fuse'); 1: each alone")
    return p.parse_args(argv)


def resolve_profile(args: argparse.Namespace) -> Profile:
    profile = load_profile(args.cluster) if args.cluster else default_profile(args.backend or "local")
    if args.backend and args.backend != profile.backend:
        raise UserError(f"{args.cluster}: key 'backend' is '{profile.backend}' but --backend is '{args.backend}'; make them agree")
    if args.max_parallel is not None:
        if profile.backend != "local" or not 1 <= args.max_parallel <= MAX_PARALLEL:
            raise UserError(f"--max-parallel is {args.max_parallel}: allowed only with the local backend, and 1 to {MAX_PARALLEL}")
        profile = replace(profile, max_parallel=args.max_parallel)
    if args.fuse is not None:
        if args.fuse < 1:
            raise UserError(f"--fuse is {args.fuse}; allowed: >= 1 (1: every trial alone)")
        if args.fuse > MAX_FUSE:  # the flag named, not the profile key it overrides
            raise UserError(f"--fuse is {args.fuse}; allowed: >= 1 (1: every trial alone) and <= {MAX_FUSE}")
        profile = replace(profile, fuse=args.fuse)
    return profile


def groups_of(plan: Plan, profile: Profile) -> list[list[Path]]:
    """The trials to run as fused groups of trial folders: exactly what the backend gets (and --dry-run shows)."""
    out_of_memory = {tid for tid, st in plan.states.items() if st.state == "failed" and st.status.error_kind == OUT_OF_MEMORY}
    groups = pack(plan.to_run, profile.fuse, min_groups=profile.workers(), alone=out_of_memory)
    return [[trial_folder(plan.sweep, s.trial_id) for s in g] for g in groups]


def print_plan(grid: Grid, plan: Plan, profile: Profile, groups: list[list[Path]]) -> None:
    est = estimate(plan.to_run, cpus_per_trial(profile))
    cols = ("trial_id", "state", *grid.axes)
    rows = [(s.trial_id, plan.states[s.trial_id].state, *(str(getattr(s, a)) for a in grid.axes)) for s in plan.specs]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    dup = grid.n_expanded - len(grid.specs)
    print(
        f"\n{grid.name}: {len(plan.specs)} trials ({dup} duplicates collapsed), {plan.count('done')} done, "
        f"{len(plan.to_run)} to run on backend '{profile.backend}'"
    )
    fused = sum(len(g) for g in groups if len(g) > 1)
    # With fusing on, a fusable trial packed alone still trains on the fused engine, beside a
    # throwaway twin (trainer.trial): counted apart, so "0 of 1 trials train fused" is not misread.
    out_of_memory = {tid for tid, st in plan.states.items() if st.state == "failed" and st.status.error_kind == OUT_OF_MEMORY}
    twinned = sum(1 for s in plan.to_run if profile.fuse > 1 and s.fuse_key() is not None and s.trial_id not in out_of_memory) - fused
    print(
        f"packing: {fused} of {len(plan.to_run)} trials train fused, in {sum(len(g) > 1 for g in groups)} groups of at most "
        f"{profile.fuse} (--fuse); {len(groups)} groups in all, {profile.workers()} at a time"
        + (f"; {twinned} alone on the fused engine beside a throwaway twin (the same numbers as fused)" if twinned > 0 else "")
        + ":"
    )
    for i, g in enumerate(groups):
        print(f"  group {i + 1}: {' '.join(f.name for f in g)}")
    if est.per_trial:
        eval_share = sum(c.eval_hours for c in est.per_trial.values()) / max(est.gpu_hours, 1e-12)
        print(f"GPU-hours to run: {est.gpu_hours:.2f}, evaluation and ablation {eval_share:.0%} of it (estimate: {est.explain()})")
    else:
        print("GPU-hours to run: 0.00 (nothing to run)")


def cpus_per_trial(profile: Profile) -> int:
    """The CPU cores one group of trials gets from this profile (its loader's budget)."""
    cpus = getattr(profile, "cpus_per_trial", None)
    return int(cpus) if cpus else max(1, (os.cpu_count() or 1) // profile.workers())


def summary(grid: Grid, plan: Plan) -> str:
    """Where the grid's trials stand, every state counted (trials held by live processes as running)."""
    n = len(plan.specs)
    parts = [f"{plan.count('done')} done", f"{plan.count('failed')} failed"]
    if running := plan.count("running"):
        parts.append(f"{running} running in another process (another launcher, or the workers of a killed one: they finish on their own)")
    for state, label in (("interrupted", "interrupted"), ("pending", "not started"), ("unreadable", "unreadable")):
        if count := plan.count(state):
            parts.append(f"{count} {label}")
    line = f"{grid.name}: {', '.join(parts)} of {n} -> {plan.sweep}"
    if plan.count("done") < n:
        line += f"\nnot finished: see python -m orchestrator.status {plan.sweep}"
    return line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = resolve_profile(args)
    backend = backend_for(profile)
    grid = load_grid(args.grid, overrides=profile.trial_overrides(), overrides_from=args.cluster)
    folder = sweep_dir(args.results, grid.name)
    check_results_root(args.results, folder)
    trial_folders(folder)  # warns once about folders under trials/ that are not trials
    if args.retry_failed:
        # One more round for every failed trial that can be retried (diverged ones stay failed):
        # the plan and the backend's runner both count attempts against the raised cap.
        extra = max((s.attempts for s in scan(folder, warn=None).values()), default=0)
        profile = replace(profile, max_attempts=profile.max_attempts + extra)
        backend = backend_for(profile)
    max_attempts = profile.max_attempts
    source = str(args.cluster if args.cluster and "device" in profile.trial_overrides() else args.grid)
    plan = make_plan(grid.specs, folder, max_attempts, source)
    groups = groups_of(plan, profile)
    if args.dry_run:
        print_plan(grid, plan, profile, groups)
        if groups and (text := backend.describe(groups, folder)):
            print(text)
        return EXIT_DONE
    try:
        preflight(plan, backend)  # every launch check, in the order orchestrator.preflight documents
    except ProfileError as err:  # the engine refused a setting of the profile: name its file
        raise UserError(f"{args.cluster}: {err}" if args.cluster else str(err)) from None
    for line in repair_specs(plan):
        print(f"repaired: {line}", file=sys.stderr)
    for line in set_aside_damaged(plan):
        print(f"set aside: {line}", file=sys.stderr)
    if not plan.to_run:
        print_plan(grid, plan, profile, groups)
        if plan.count("done") == len(plan.specs):
            print("nothing to run: every trial is done")
            return EXIT_DONE
        print(f"nothing to run here (the rest failed beyond their attempts, or runs elsewhere)\n{summary(grid, plan)}")
        return EXIT_UNFINISHED
    with launching(folder):  # status --watch and cancel see a live launcher by it
        record_grid(
            args.grid, folder
        )  # first: a grid.yaml that cannot be written (a folder in the way) stops the launch before any trial folder
        prepare(plan)
        clear_request(folder)  # an earlier orchestrator.cancel does not stop this launch
        print(
            f"{grid.name}: running {len(plan.to_run)} of {len(plan.specs)} trials as {len(groups)} groups (fuse {profile.fuse}) "
            f"on '{profile.backend}' into {folder}",
            file=sys.stderr,
        )
        launch = backend.run(groups, folder)
    if launch.note:
        print(launch.note)
    if not launch.waited:
        return EXIT_UNSUBMITTED if launch.unsubmitted else EXIT_DONE
    final = make_plan(grid.specs, folder, max_attempts)
    print(summary(grid, final))
    return EXIT_DONE if final.count("done") == len(final.specs) else EXIT_UNFINISHED


if __name__ == "__main__":
    sys.exit(cli(main))
