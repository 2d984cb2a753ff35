"""Ray Tune backend: the trial folders of a sweep as one Tune grid, on a private local Ray or a cluster.

    cluster_configs/ray/local.yaml            a Ray started (and stopped) by the launcher on this machine
    cluster_configs/ray/cluster-profile.yaml  join a running cluster (`address: auto` on its head node)

Each Tune trial is one of OUR trial folders: the function trainable calls `trainer.run.run_trial`
on it and reports once, at the end. Tune only schedules (resources per trial, fractional GPUs,
concurrency) and retries: a trial that raised is restarted up to `max_failures` times and
resumes from the checkpoint in its own folder, not from a Tune checkpoint. A diverged trial, a
user mistake, or a trial another launcher holds is reported and not retried. Tune's own files
(logs, error.txt) go to `<sweep>/.ray/<launch time>/<trial_id>/`; nothing reads them back:
skip-if-done and resume rest on the trial folders, so a sweep can move between backends.

On a cluster, the sweep folder (and the data) must be on a filesystem every node mounts at the
same path. The code is shipped to the workers (runtime_env py_modules) only when a worker does
not already import the launcher's exact code (an installed image or a shared checkout).

This is the only file of the project that imports ray (Ray's APIs move; see NOTES "Ray 2.60").
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

import trainer
from orchestrator.plan import TrialState, load_spec, read_state
from orchestrator.profiles import RayProfile
from orchestrator.progress import Progress
from trainer.errors import UserError
from trainer.lock import TrialBusy
from trainer.results import EPOCHS, STATUS, read_json

# The packages a worker imports to run a trial (the trainable is pickled by reference to this module).
_PACKAGES = (Path(trainer.__file__).parent, Path(__file__).resolve().parents[1])
_PROBE_TIMEOUT_S = 120  # a cluster may have to start a node first


def run_ray(spec_paths: list[Path], profile: RayProfile, sweep: Path) -> None:
    """Run the trials whose spec.json are `spec_paths` as one Tune grid; returns when each ended.

    Failed trials do not raise: the caller rescans the trial folders for the outcome.
    """
    folders = [str(p.parent.resolve()) for p in spec_paths]
    sweep = sweep.resolve()
    _check_profile(profile)
    started, private_temp = _connect(profile, sweep)
    try:
        if profile.address is None:
            _check_fits(profile)
        tuner = tune.Tuner(
            tune.with_resources(_trainable, {"cpu": profile.cpus_per_trial, "gpu": profile.gpus_per_trial}),
            param_space={
                "folder": tune.grid_search(folders),
                "threads": max(1, round(profile.cpus_per_trial)),
                "cwd": os.getcwd(),  # relative paths in a spec (data_root) mean what they mean to the launcher
            },
            tune_config=tune.TuneConfig(
                max_concurrent_trials=profile.max_concurrent or None,
                trial_name_creator=_trial_id,
                trial_dirname_creator=_trial_id,
            ),
            run_config=tune.RunConfig(
                name=time.strftime("%Y%m%d-%H%M%S"),
                storage_path=str(sweep / ".ray"),
                failure_config=tune.FailureConfig(max_failures=profile.max_failures),
                callbacks=[_ProgressCallback(len(folders))],
                verbose=0,  # our one-line progress instead of Tune's tables
            ),
        )
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()  # a local Ray stops; a cluster only loses this driver
        if private_temp:
            shutil.rmtree(private_temp, ignore_errors=True)
    _print_summary(folders, [r.metrics or {} for r in grid])


# ---- the trainable (runs in a Ray worker) --------------------------------------------------------
def _trainable(config: dict[str, Any]) -> None:
    """Run one trial folder; raising makes Tune restart it (it resumes from its own checkpoint)."""
    import torch

    from trainer.run import run_trial  # here, not at the top: the launcher never trains

    # Tune made the cwd its own trial dir; go back so relative paths resolve as for the local backend.
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    # A trial gets the cores it asked for, not one thread per core of the node (oversubscription).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(config["threads"])
    torch.set_num_threads(config["threads"])
    folder = Path(config["folder"])
    try:
        run_trial(load_spec(folder), folder)
    except TrialBusy:
        tune.report({"state": "busy"})  # another launcher runs it; its result lands in the same folder
        return
    except UserError as err:
        tune.report({"state": "failed", "error": str(err)})  # a user mistake fails the same way again
        return
    tune.report(_final_metrics(folder))  # done, or diverged (failed, not retryable): no retry either way


def _final_metrics(folder: Path) -> dict[str, Any]:
    status = read_json(folder / STATUS)
    metrics = {k: status.get(k) for k in ("state", "epoch", "attempts", "error_kind", "error")}
    if (folder / EPOCHS).exists():
        import pyarrow.parquet as pq

        last = pq.read_table(folder / EPOCHS, columns=["test_acc", "csi_mean"]).to_pylist()[-1:]
        metrics.update(last[0] if last else {})
    return metrics


# ---- starting or joining Ray ------------------------------------------------------------------------
def _check_profile(profile: RayProfile) -> None:
    if profile.address is not None:
        local_only = [k for k in ("num_cpus", "num_gpus", "temp_dir") if getattr(profile, k) is not None]
        if local_only:
            raise UserError(f"ray profile: keys {', '.join(local_only)} apply to a local Ray only; remove them or 'address'")
    if profile.cpus_per_trial <= 0:
        raise UserError(f"ray profile: key 'cpus_per_trial' is {profile.cpus_per_trial}; allowed: > 0")
    if profile.gpus_per_trial > 1 and profile.gpus_per_trial != int(profile.gpus_per_trial):
        raise UserError(f"ray profile: key 'gpus_per_trial' is {profile.gpus_per_trial}; allowed: a fraction <= 1 or a whole number")
    if profile.gpus_per_trial == 0 and (profile.device or "").startswith("cuda"):
        raise UserError("ray profile: device is cuda but gpus_per_trial is 0 (Ray hides the GPUs from such trials)")


def _connect(profile: RayProfile, sweep: Path) -> tuple[bool, str | None]:
    """Start a local Ray or join `profile.address`; returns (we connected, private temp dir to remove)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by ray.init and the processes it starts
    if ray.is_initialized():  # a caller's own Ray (a notebook): use it, leave it running
        return False, None
    if profile.address is None:
        # Ray's sockets live under the temp dir and AF_UNIX paths stop at 107 bytes: keep it short.
        private = None if profile.temp_dir else tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        ray.init(
            num_cpus=profile.num_cpus, num_gpus=profile.num_gpus, include_dashboard=False,
            _temp_dir=profile.temp_dir or private, logging_level="WARNING",
        )  # fmt: skip
        return True, private
    ray.init(address=profile.address, logging_level="WARNING")
    try:
        probe = _probe_workers(str(sweep))
        if probe is None or probe[0] != _code_fingerprint():
            # Workers lack this code or run another version of it: ship the two packages with the job.
            print("ray: shipping trainer/ and orchestrator/ to the workers (runtime_env py_modules)", file=sys.stderr)
            ray.shutdown()
            ray.init(address=profile.address, logging_level="WARNING", runtime_env={"py_modules": [str(p) for p in _PACKAGES]})
            probe = _probe_workers(str(sweep))
        if probe is None:
            raise UserError(f"ray cluster {profile.address}: a worker cannot import the project even with its code shipped; see the driver log above")
        if not probe[1]:
            raise UserError(
                f"ray cluster {profile.address}: a worker node does not see {sweep}; put --results on a filesystem "
                "every node mounts at the same path"
            )
    except BaseException:
        ray.shutdown()
        raise
    return True, None


def _code_fingerprint() -> str:
    """A hash of the project's Python sources: equal on a worker iff it runs the launcher's code."""
    h = hashlib.sha256()
    for pkg in _PACKAGES:
        for path in sorted(pkg.rglob("*.py")):
            h.update(str(path.relative_to(pkg.parent)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _probe(sweep: str) -> tuple[str, bool]:
    return _code_fingerprint(), os.path.isdir(sweep)


def _probe_workers(sweep: str) -> tuple[str, bool] | None:
    """(code fingerprint, sweep folder visible) on a worker; None if it cannot import this module."""
    try:
        return ray.get(ray.remote(num_cpus=0)(_probe).remote(sweep), timeout=_PROBE_TIMEOUT_S)
    except (ray.exceptions.RayError, ImportError) as err:
        print(f"ray: probing a worker failed: {type(err).__name__}: {str(err).splitlines()[0]}", file=sys.stderr)
        return None


def _check_fits(profile: RayProfile) -> None:
    """On a local Ray a trial bigger than the machine would wait forever: say so instead."""
    have = ray.cluster_resources()
    for key, need in (("CPU", profile.cpus_per_trial), ("GPU", profile.gpus_per_trial)):
        if need > have.get(key, 0):
            raise UserError(f"ray profile: a trial asks for {need} {key} but the local Ray has {have.get(key, 0):g}; lower {key.lower()}s_per_trial")


# ---- naming, progress, summary ----------------------------------------------------------------------
def _trial_id(trial: Any) -> str:
    return Path(trial.config["folder"]).name


class _ProgressCallback(tune.Callback):
    """The launcher's one-line progress, fed from the trial folders as Tune finishes trials."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.finished: dict[str, TrialState] = {}
        self.progress: Progress | None = Progress(total, "ray")

    def _update(self, trials: list[Any], trial: Any, event: str) -> None:
        self.progress = self.progress or Progress(self.total, "ray")
        state = read_state(Path(trial.config["folder"]))
        self.finished[state.trial_id] = state
        done = sum(s.state == "done" for s in self.finished.values())
        failed = sum(s.state == "failed" for s in self.finished.values())
        running = sum(t.status == "RUNNING" for t in trials if t is not trial)
        self.progress.update(done, failed, running, f"{state.trial_id} {event}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trials, trial, (trial.last_result or {}).get("state", "ended"))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trials, trial, f"errored after {trial.num_failures} failures")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        print(f"ray: {_trial_id(trial)} failed (failure {trial.num_failures}); restarting from its checkpoint", file=sys.stderr)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "progress": None}  # Tune pickles its callbacks; a stream does not pickle


def _print_summary(folders: list[str], reports: list[dict[str, Any]]) -> None:
    states = [read_state(Path(f)) for f in folders]
    busy = sum(r.get("state") == "busy" for r in reports)
    counts = {s: sum(st.state == s for st in states) for s in ("done", "failed", "running", "interrupted", "pending")}
    print("ray: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + (f" ({busy} run by another launcher)" if busy else ""))
    for st in states:
        if st.state == "failed":
            print(f"  {st.trial_id} failed after {st.attempts} attempt(s): {st.error}")
