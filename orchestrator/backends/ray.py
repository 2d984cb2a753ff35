"""Ray Tune backend: the trial folders of a sweep as one Tune grid, on a private local Ray or a cluster.

    cluster_configs/ray/local.yaml            a Ray started (and stopped) by the launcher on this machine
    cluster_configs/ray/cluster-profile.yaml  join a running cluster (`address: auto` on its head node)

Each Tune trial is one group of OUR trial folders (orchestrator.pack: one trial, or several
trained fused): the function trainable calls `trainer.group.run_group` on it and reports once,
at the end. Tune only schedules (resources per trial, fractional GPUs,
concurrency) and retries: a trial that raised is restarted up to `max_failures` times and
resumes from the checkpoint in its own folder, not from a Tune checkpoint. A diverged trial, a
user mistake, or a trial another launcher holds is reported and not retried. Tune's own files
(logs, error.txt) go to `<sweep>/.ray/<launch time-pid>/<trial_id>/`; nothing reads them back:
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
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _token_auth_if_token() -> None:
    """Send the user's Ray token when there is one (Ray reads RAY_AUTH_MODE once, when imported).

    Ray >= 2.59 turns token auth on for every cluster it starts where a token exists
    (~/.ray/auth_token), but a driver joining one sends the token only with RAY_AUTH_MODE=token,
    else it fails after ~20 s (InvalidAuthToken). A token-mode driver joins a cluster without
    auth too, and a local ray.init() enables token mode anyway, so this is safe either way.
    """
    token_file = Path.home() / ".ray" / "auth_token"
    has_token = "RAY_AUTH_TOKEN" in os.environ or "RAY_AUTH_TOKEN_PATH" in os.environ or token_file.exists()
    if "RAY_AUTH_MODE" not in os.environ and has_token:
        os.environ["RAY_AUTH_MODE"] = "token"


_token_auth_if_token()
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

import trainer
from orchestrator.plan import TrialState, load_spec, read_state
from orchestrator.profiles import RayProfile
from orchestrator.progress import Progress
from trainer.errors import UserError
from trainer.results import EPOCHS, STATUS, read_json

# The packages a worker imports to run a trial (the trainable is pickled by reference to this module).
_PACKAGES = (Path(trainer.__file__).parent, Path(__file__).resolve().parents[1])
_PROBE_TIMEOUT_S = 60


def run_ray(groups: list[list[Path]], profile: RayProfile, sweep: Path) -> None:
    """Run the groups of trials (their spec.json paths) as one Tune grid; returns when each ended.

    Failed trials do not raise: the caller rescans the trial folders for the outcome.
    """
    if not groups:
        return
    folder_groups = [[str(p.parent.resolve()) for p in g] for g in groups]
    folders = [f for g in folder_groups for f in g]
    sweep = sweep.resolve()
    _check_profile(profile, {load_spec(Path(f)).device for f in folders})
    started, private_temp = _connect(profile, sweep)
    try:
        if profile.address is None:
            _check_fits(profile)
        tuner = tune.Tuner(
            tune.with_resources(_trainable, {"cpu": profile.cpus_per_trial, "gpu": profile.gpus_per_trial}),
            param_space={
                "folders": tune.grid_search(folder_groups),
                "threads": max(1, round(profile.cpus_per_trial)),
                "fuse": profile.fuse > 1,
                "cwd": os.getcwd(),  # relative paths in a spec (data_root) mean what they mean to the launcher
            },
            tune_config=tune.TuneConfig(
                max_concurrent_trials=profile.max_concurrent or None,
                trial_name_creator=_trial_id,
                trial_dirname_creator=_trial_id,
                # The next trial reuses a finished trial's worker process: torch and the project are
                # imported once per worker, not once per trial (seconds each on a small machine).
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",  # one per launch; launchers may share a sweep
                storage_path=str(sweep / ".ray"),
                failure_config=tune.FailureConfig(max_failures=profile.max_failures),
                callbacks=[_ProgressCallback(len(folders))],
                verbose=0,  # our one-line progress, not Tune's status tables (it still prints a header)
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
    """Run one group of trial folders; raising makes Tune restart it (each resumes from its own checkpoint)."""
    import torch

    from trainer.group import run_group  # here, not at the top: the launcher never trains

    # Tune made the cwd its own trial dir; go back so relative paths resolve as for the local backend.
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    # A trial gets the cores it asked for, not one thread per core of the node (oversubscription).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(config["threads"])
    torch.set_num_threads(config["threads"])
    folders = [Path(f) for f in config["folders"]]
    try:
        # Busy members (another launcher runs them) come back 'busy'; their results land in the same folders.
        states = run_group([load_spec(f) for f in folders], folders, fuse=config.get("fuse", True))
    except UserError as err:
        tune.report({"state": "failed", "error": str(err)})  # a user mistake fails the same way again
        return
    tune.report(_final_metrics(folders, states))  # done, or diverged (failed, not retryable): no retry either way


def _final_metrics(folders: list[Path], states: list[str]) -> dict[str, Any]:
    """One report per group: the states, and each member's last test accuracy and csi_mean."""
    summary = sorted(set(states))
    metrics: dict[str, Any] = {"state": summary[0] if len(summary) == 1 else ", ".join(f"{states.count(s)} {s}" for s in summary)}
    metrics["busy"] = states.count("busy")
    import pyarrow.parquet as pq

    for folder in folders:
        status = read_json(folder / STATUS) if (folder / STATUS).exists() else {}
        metrics[f"{folder.name}/state"] = status.get("state")
        metrics[f"{folder.name}/error"] = status.get("error")
        if (folder / EPOCHS).exists():
            last = pq.read_table(folder / EPOCHS, columns=["test_acc", "csi_mean"]).to_pylist()[-1:]
            metrics.update({f"{folder.name}/{k}": v for k, v in (last[0] if last else {}).items()})
    return metrics


# ---- starting or joining Ray ------------------------------------------------------------------------
def preflight(profile: RayProfile) -> None:
    """The profile's mistakes, and an unreachable cluster address, before anything is written."""
    _check_profile(profile, {profile.device} if profile.device else set())
    if profile.address is not None:
        _check_reachable(profile.address)


def _check_profile(profile: RayProfile, devices: set[str]) -> None:
    if profile.address is not None:
        local_only = [k for k in ("num_cpus", "num_gpus", "temp_dir") if getattr(profile, k) is not None]
        if local_only:
            raise UserError(f"ray profile: keys {', '.join(local_only)} apply to a local Ray only; remove them or 'address'")
    if profile.cpus_per_trial <= 0:
        raise UserError(f"ray profile: key 'cpus_per_trial' is {profile.cpus_per_trial}; allowed: > 0")
    if profile.gpus_per_trial > 1 and profile.gpus_per_trial != int(profile.gpus_per_trial):
        raise UserError(f"ray profile: key 'gpus_per_trial' is {profile.gpus_per_trial}; allowed: a fraction <= 1, or whole GPUs")
    if profile.gpus_per_trial == 0 and any(d.startswith("cuda") for d in devices):
        raise UserError("ray profile: the trials' device is cuda but gpus_per_trial is 0 (Ray hides GPUs from such trials)")
    if any(d.startswith("cuda:") for d in devices):
        raise UserError("ray: a trial's device names a GPU (cuda:N) but Ray picks each trial's GPU; use device auto or cuda")


def _connect(profile: RayProfile, sweep: Path) -> tuple[bool, str | None]:
    """Start a local Ray or join `profile.address`; returns (we connected, private temp dir to remove)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by ray.init and the processes it starts
    if ray.is_initialized():  # a caller's own Ray (a notebook): use it, leave it running
        return False, None
    if profile.address is None:
        # Ray's sockets live under the temp dir and AF_UNIX paths stop at 107 bytes: keep it short.
        private = None if profile.temp_dir else tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        ray.init(
            address="local",  # a new Ray even where RAY_ADDRESS names a cluster
            num_cpus=profile.num_cpus, num_gpus=profile.num_gpus, include_dashboard=False,
            _temp_dir=profile.temp_dir or private, logging_level="WARNING",
        )  # fmt: skip
        return True, private
    _check_reachable(profile.address)
    try:
        ray.init(address=profile.address, logging_level="WARNING")
    except ConnectionError as err:
        reason = str(err).splitlines()[0]
        raise UserError(f"ray cluster {profile.address}: cannot connect ({reason}); is it up (`ray status` on its head)?") from None
    try:
        probes = _probe_nodes(str(sweep))
        if probes is None or any(fingerprint != _code_fingerprint() for _, fingerprint, _ in probes):
            # A node lacks this code or runs another version of it: ship the two packages with the job.
            print("ray: shipping trainer/ and orchestrator/ to the workers (runtime_env py_modules)", file=sys.stderr)
            ray.shutdown()
            code = {"py_modules": [str(p) for p in _PACKAGES]}
            ray.init(address=profile.address, logging_level="WARNING", runtime_env=code)
            probes = _probe_nodes(str(sweep))
        if probes is None:
            raise UserError(f"ray cluster {profile.address}: a node cannot run the project's code even shipped (see above)")
        blind = [ip for ip, _, sees in probes if not sees]
        if blind:
            raise UserError(
                f"ray cluster {profile.address}: node(s) {', '.join(blind)} do not see {sweep}; put --results on a "
                "filesystem every node mounts at the same path"
            )
    except BaseException:
        ray.shutdown()
        raise
    return True, None


def _check_reachable(address: str) -> None:
    """ray.init waits for minutes on a host:port where nothing listens; a TCP connect answers at once."""
    host, _, port = address.rpartition(":")
    if host and port.isdigit() and "://" not in address:
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as err:
            raise UserError(f"ray cluster {address}: nothing answers there ({err}); is it up (`ray status` on its head)?") from None


def _code_fingerprint() -> str:
    """A hash of the project's Python sources: equal on a worker iff it runs the launcher's code."""
    h = hashlib.sha256()
    for pkg in _PACKAGES:
        for path in sorted(pkg.rglob("*.py")):
            h.update(str(path.relative_to(pkg.parent)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _probe(sweep: str) -> tuple[str, str, bool]:
    return ray.util.get_node_ip_address(), _code_fingerprint(), os.path.isdir(sweep)


def _probe_nodes(sweep: str) -> list[tuple[str, str, bool]] | None:
    """(node ip, code fingerprint, sweep folder visible) of every live node; None if one cannot run this module.

    Nodes the autoscaler adds later are not probed; they come from the same setup as these.
    """
    probe = ray.remote(num_cpus=0)(_probe)
    try:
        refs = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(sweep)
            for node in ray.nodes() if node["Alive"]
        ]  # fmt: skip
        return ray.get(refs, timeout=_PROBE_TIMEOUT_S)
    except (ray.exceptions.RayError, ImportError) as err:
        print(f"ray: probing the nodes failed: {type(err).__name__}: {str(err).splitlines()[0]}", file=sys.stderr)
        return None


def _check_fits(profile: RayProfile) -> None:
    """On a local Ray a trial bigger than the machine would wait forever: say so instead."""
    have = ray.cluster_resources()
    for key, need in (("CPU", profile.cpus_per_trial), ("GPU", profile.gpus_per_trial)):
        if need > have.get(key, 0):
            raise UserError(
                f"ray profile: a trial asks for {need} {key} but the local Ray has {have.get(key, 0):g}; lower {key.lower()}s_per_trial"
            )


# ---- naming, progress, summary ----------------------------------------------------------------------
def _trial_id(trial: Any) -> str:
    """Tune's name of a group: its first trial's id, and how many more train with it."""
    folders = trial.config["folders"]
    return Path(folders[0]).name + (f"+{len(folders) - 1}" if len(folders) > 1 else "")


class _ProgressCallback(tune.Callback):
    """The launcher's one-line progress, fed from the trial folders as Tune finishes trials."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.finished: dict[str, TrialState] = {}
        self.progress: Progress | None = Progress(total, "ray")

    def _update(self, trials: list[Any], trial: Any, event: str) -> None:
        self.progress = self.progress or Progress(self.total, "ray")
        for folder in trial.config["folders"]:
            state = read_state(Path(folder))
            self.finished[state.trial_id] = state
        done = sum(s.state == "done" for s in self.finished.values())
        failed = sum(s.state == "failed" for s in self.finished.values())
        running = sum(t.status == "RUNNING" for t in trials if t is not trial)
        self.progress.update(done, failed, running, f"{_trial_id(trial)} {event}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trials, trial, (trial.last_result or {}).get("state", "ended"))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trials, trial, f"errored after {trial.num_failures} failures")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        tid, n = _trial_id(trial), trial.num_failures
        print(f"ray: {tid} failed (failure {n}); restarting from its checkpoint", file=sys.stderr)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "progress": None}  # Tune pickles its callbacks; a stream does not pickle


def _print_summary(folders: list[str], reports: list[dict[str, Any]]) -> None:
    states = [read_state(Path(f)) for f in folders]
    busy = sum(int(r.get("busy") or 0) for r in reports)
    counts = {s: sum(st.state == s for st in states) for s in ("done", "failed", "running", "interrupted", "pending")}
    elsewhere = f" ({busy} run by another launcher)" if busy else ""
    print("ray: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + elsewhere)
    for st in states:
        if st.state == "failed":
            print(f"  {st.trial_id} failed after {st.attempts} attempt(s): {st.error}")
