"""Representation analyses over a sweep: `python -m orchestrator.analysis.represent results/<sweep>`.

    --max-parallel N   N worker processes (default: one)
    --device D         device of the first phase (default: each trial's own device field)
    --cross-seed       also pair each regularized trial with the unregularized trials of the other
                       seeds ("vs_unregularized_other_seed"; n - 1 more comparisons per trial)
    --minibatch-cka    also Ranadive et al.'s minibatch CKA of every pair (trainer.analysis.minibatch_cka_job:
                       loads both checkpoints of each kept epoch; a GPU helps)

Two phases, each a pool of worker processes (orchestrator.runner.WorkerPool), each growing files
a killed run resumes from (docs/analysis.md):
1. every done trial that kept checkpoints but lacks some of their activations (a sweep run
   without `represent: true`, or a trial that kept more since): `python -m trainer.analysis.representation_job
   --trial F` stores them and their dimensionality (reads the data set; a GPU helps for ImageNet);
2. every pair (`pairs`) with epochs not yet compared: `python -m trainer.analysis.similarity_job --trial A
   --against B ...`, one worker per trial A, CKA and PWCCA from the stored activations (numpy
   only, no torch).

Pairs: trials that agree in every field of the trial id but alpha, onset_epoch, offset_epoch and
seed form a group. In a group, each regularized trial (alpha != 0) is paired with the
unregularized trial of its seed ("vs_unregularized"), and each unregularized trial with every
unregularized trial of a lower seed ("across_seeds", the baseline); with --cross-seed, each
regularized trial also with the unregularized trials of every other seed
("vs_unregularized_other_seed": "as different as another seed?" read directly). Then
`python -m orchestrator.collect results/<sweep>` adds the tables and figures.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from orchestrator.analysis.pool import check_sweep, check_trial_devices, run_pool
from orchestrator.folders import scan
from trainer import results as R
from trainer.analysis.similarity_job import DIMENSIONALITY, MINIBATCH_CKA, SIMILARITY, kept_checkpoint_epochs, stored_epochs
from trainer.cli import ArgumentParser, cli
from trainer.errors import UserError
from trainer.kept import missing_kept, missing_warning
from trainer.spec import IN_TRIAL_ID, TrialSpec

REPRESENT_LOG = "represent.log"
REGULARIZER_FIELDS = ("alpha", "onset_epoch", "offset_epoch", "seed")  # what may differ within a pairing group


def pairing_key(spec: TrialSpec) -> tuple[tuple[str, str], ...]:
    """Trials with equal keys are the same training but for the regularizer and the seed."""
    d = spec.to_dict()
    return tuple((k, repr(d[k])) for k in sorted(IN_TRIAL_ID) if k not in REGULARIZER_FIELDS)


def pairs(specs: dict[str, TrialSpec], cross_seed: bool = False) -> dict[str, list[str]]:
    """trial_id -> the trial_ids of its references (see the module docstring), for trials that have any;
    `cross_seed`: a regularized trial's own-seed reference first, then the other seeds'."""
    groups: dict[tuple, list[TrialSpec]] = defaultdict(list)
    for spec in specs.values():
        groups[pairing_key(spec)].append(spec)
    out: dict[str, list[str]] = {}
    for members in groups.values():
        plain = {s.seed: s for s in members if s.alpha == 0}  # alpha 0 is one trial per seed (spec normalises the window)
        for s in sorted(members, key=lambda s: (s.seed, s.alpha, s.onset_epoch, s.trial_id)):
            if s.alpha != 0:
                refs = [plain[s.seed].trial_id] if s.seed in plain else []
                if cross_seed:
                    refs += [plain[seed].trial_id for seed in sorted(plain) if seed != s.seed]
            else:
                refs = [plain[seed].trial_id for seed in sorted(plain) if seed < s.seed]
            if refs:
                out[s.trial_id] = refs
    return out


def _table_keys(path: Path, columns: list[str]) -> set[tuple]:
    if not path.exists():
        return set()
    table = pq.read_table(path, columns=columns)
    return set(zip(*(table[c].to_pylist() for c in columns)))


def needs_activations(folder: Path) -> bool:
    """Some kept checkpoint has no stored activations (or no dimensionality rows) yet."""
    analysed = set(stored_epochs(folder)) & {e for (e,) in _table_keys(folder / DIMENSIONALITY, ["epoch"])}
    return bool(set(kept_checkpoint_epochs(folder)) - analysed)


def needs_comparing(folder: Path, refs: list[Path]) -> bool:
    """Some epoch stored by the trial and one of its references is not in its similarity.parquet yet."""
    mine = set(stored_epochs(folder))
    expected = {(ref.name, e) for ref in refs for e in mine & set(stored_epochs(ref))}
    return bool(expected - _table_keys(folder / SIMILARITY, ["reference_id", "epoch"]))


def warn_missing_kept(folders: list[Path]) -> None:
    """One warning per done trial whose spec kept checkpoints that are not there (the jobs skip those epochs)."""
    for folder in folders:
        spec = TrialSpec.from_dict(R.read_json(folder / R.SPEC), where=str(folder / R.SPEC))
        if missing := missing_kept(folder, spec):
            print(missing_warning(folder, missing), file=sys.stderr, flush=True)


def needs_minibatch(folder: Path, refs: list[Path]) -> bool:
    """Some epoch kept by the trial and one of its references is not in its minibatch_cka.parquet yet."""
    mine = set(kept_checkpoint_epochs(folder))
    expected = {(ref.name, e) for ref in refs for e in mine & set(kept_checkpoint_epochs(ref))}
    return bool(expected - _table_keys(folder / MINIBATCH_CKA, ["reference_id", "epoch"]))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.represent", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--max-parallel", type=int, default=1)
    p.add_argument("--device", default=None, help="device of the activations phase (default: each trial's device field)")
    p.add_argument("--cross-seed", action="store_true", help="also pair regularized trials with other seeds' unregularized trials")
    p.add_argument("--minibatch-cka", action="store_true", help="also Ranadive et al.'s minibatch CKA of every pair (loads checkpoints)")
    args = p.parse_args(argv)
    check_sweep(args.sweep, args.max_parallel, args.device)
    done = {tid: s.folder for tid, s in scan(args.sweep).items() if s.state == "done" and kept_checkpoint_epochs(s.folder)}
    if not done:
        raise UserError(f"{args.sweep}: no done trial with kept checkpoints (checkpoints/) to analyse")
    specs = {tid: TrialSpec.from_dict(R.read_json(f / R.SPEC), where=str(f / R.SPEC)) for tid, f in done.items()}
    if args.device is None:
        check_trial_devices(list(specs.values()))
    device = ["--device", args.device] if args.device else []
    todo = [(folder, device) for folder in done.values() if needs_activations(folder)]
    warn_missing_kept(list(done.values()))
    failed = run_pool("trainer.analysis.representation_job", todo, args.max_parallel, "activations", REPRESENT_LOG) if todo else []
    analysed = len(todo) - len(failed)  # the summary counts only what worked
    compared = [
        (done[a], [arg for b in refs for arg in ("--against", str(done[b]))])
        for a, refs in pairs(specs, args.cross_seed).items()
        if needs_comparing(done[a], [done[b] for b in refs])
    ]
    failed += run_pool("trainer.analysis.similarity_job", compared, args.max_parallel, "pairs", REPRESENT_LOG) if compared else []
    if args.minibatch_cka:
        minibatch = [
            (done[a], [*device, *(arg for b in refs for arg in ("--against", str(done[b])))])
            for a, refs in pairs(specs, args.cross_seed).items()
            if needs_minibatch(done[a], [done[b] for b in refs])
        ]
        failed += (
            run_pool("trainer.analysis.minibatch_cka_job", minibatch, args.max_parallel, "minibatch CKA", REPRESENT_LOG)
            if minibatch
            else []
        )
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    n_pairs = sum(len(refs) for refs in pairs(specs, args.cross_seed).values())
    failed_pairs = len(failed) - (len(todo) - analysed)
    print(
        f"{args.sweep}: activations of {analysed} trials, {n_pairs} pairs ({len(compared) - failed_pairs} trials compared this time"
        f"{f'; {len(failed)} failed, see above' if failed else ''}); next: python -m orchestrator.collect {args.sweep}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli(main))
