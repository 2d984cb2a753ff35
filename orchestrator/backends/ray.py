"""Ray Tune backend: the trial folders of a sweep as one Tune grid, on a private local Ray or a cluster.

    cluster_configs/ray/local.yaml            a Ray started (and stopped) by the launcher on this machine
    cluster_configs/ray/cluster-profile.yaml  join a running cluster (`address: auto` on its head node)
    cluster_configs/ray/in-slurm.yaml         with scripts/ray_in_slurm.sbatch: a Ray cluster inside one SLURM allocation

Each Tune trial is one group of OUR trial folders (orchestrator.pack: one trial, or several
trained fused), on one GPU or a share of one (gpus_per_trial 0 to 1, checked in
orchestrator.profiles: the trainer never uses more than one, so a node of G GPUs runs G Tune
trials side by side). The function trainable runs it with orchestrator.runner (a `trainer.group`
worker process with the trial's cores and the GPU Ray gave it) and reports once, at the end.
Tune only schedules (resources per trial, fractional GPUs, concurrency); the runner retries a
crashed worker (each restart resumes from the trial's checkpoint) and records every outcome in
the trial folders. Tune restarts a trial whose Ray worker itself was lost (a node gone), up to
`max_attempts` times: the one retry setting of every backend. Tune's own files go to
`<sweep>/.ray/<launch time-pid>/<trial_id>/`; nothing reads them back: skip-if-done and resume
rest on the trial folders, so a sweep can move between backends.

On a cluster, the sweep folder (and the data) must be on a filesystem every node mounts at the
same path. The code is shipped to the workers (runtime_env py_modules) only when a worker does
not already import the launcher's exact code (an installed image or a shared checkout).

This is the only file of the project that imports ray (Ray's APIs move; Ray 2.60's are used).
"""

from __future__ import annotations

import _thread
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
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
import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import trainer
from orchestrator.backends import Launch
from orchestrator.cancel import clear_request, request_cancel, still_ours
from orchestrator.plan import Plan
from orchestrator.profiles import RayProfile
from orchestrator.progress import Progress
from trainer.errors import ProfileError, UserError
from trainer.results import EPOCHS
from trainer.status import TrialState, observe

# The packages a worker imports to run a trial (the trainable is pickled by reference to this module).
_PACKAGES = (Path(trainer.__file__).parent, Path(__file__).resolve().parents[1])
_PROBE_TIMEOUT_S = 60
_CONNECT_TIMEOUT_S = 60  # a driver joins a live cluster in seconds


class RayBackend:
    def __init__(self, profile: RayProfile) -> None:
        self.profile = profile

    def preflight(self, plan: Plan) -> None:
        """The profile's mistakes, a trial bigger than a local Ray, and an unreachable cluster address, before anything is written."""
        _check_profile(self.profile, {s.device for s in plan.to_run})
        if self.profile.address is None:
            _check_local_fits(self.profile)
        else:
            _check_reachable(self.profile.address)
            _check_connects(self.profile.address)

    def describe(self, groups: list[list[Path]], sweep: Path) -> str:
        return ""

    def run(self, groups: list[list[Path]], sweep: Path) -> Launch:
        run_ray(groups, self.profile, sweep)
        return Launch(waited=True)


def run_ray(groups: list[list[Path]], profile: RayProfile, sweep: Path) -> None:
    """Run the groups of trial folders as one Tune grid; returns when each ended.

    Failed trials do not raise: the caller rescans the trial folders for the outcome.
    """
    if not groups:
        return
    folder_groups = [[str(f.resolve()) for f in g] for g in groups]
    folders = [f for g in folder_groups for f in g]
    sweep = sweep.resolve()
    progress = Progress(len(folders), "ray", folders=[Path(f) for f in folders])
    started, private_temp = _connect(profile, sweep)
    ctrl_c = _StopOnCtrlC(sweep, folders)
    try:
        _check_fits(profile)
        tuner = tune.Tuner(
            tune.with_resources(_trainable, {"cpu": profile.cpus_per_trial, "gpu": profile.gpus_per_trial}),
            param_space={
                "folders": tune.grid_search(folder_groups),
                "threads": max(1, round(profile.cpus_per_trial)),
                "fused": profile.fuse > 1,
                "max_attempts": profile.max_attempts,
                "cwd": os.getcwd(),  # relative paths in a spec (data_root) mean what they mean to the launcher
            },
            tune_config=tune.TuneConfig(
                max_concurrent_trials=profile.max_concurrent or None,
                trial_name_creator=_trial_id,
                trial_dirname_creator=_trial_id,
                reuse_actors=True,  # the trainable only starts worker processes: nothing to set up per trial
            ),
            run_config=tune.RunConfig(
                name=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",  # one per launch; launchers may share a sweep
                storage_path=str(sweep / ".ray"),
                failure_config=tune.FailureConfig(max_failures=profile.max_attempts),
                callbacks=[_ProgressCallback(progress)],
                verbose=0,  # our one-line progress, not Tune's status tables (it still prints a header)
            ),
        )
        # epochs move the line between Tune's events (a fused group is one Tune trial)
        with ctrl_c, progress.ticking():
            tuner.fit()
    finally:
        if started:
            ray.shutdown()  # a local Ray stops; a cluster only loses this driver
        if private_temp:
            shutil.rmtree(private_temp, ignore_errors=True)
    _print_summary(folders)
    if ctrl_c.requested:
        raise KeyboardInterrupt  # exit 130, as any command stopped by Ctrl-C


_TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"


class _StopOnCtrlC:
    """Ctrl-C while Tune runs: the trials checkpoint at their next step and are recorded, then exit 130.

    Tune's own handler saved its experiment and killed the trials' actors some seconds later: their
    workers (on the cluster's nodes, out of reach of the terminal's signal) trained on meanwhile,
    then died without a word, the launcher exited 1 and printed Tune's `Tuner.restore(...)`, which
    is not how a sweep resumes. Instead the sweep's cancel request (orchestrator.cancel), which
    every runner polls on its node: each stops its workers at their next step (a mid-epoch
    checkpoint, the trial `interrupted`), and starts no more. A second Ctrl-C stops at once.
    """

    def __init__(self, sweep: Path, folders: list[str]) -> None:
        self.sweep, self.folders, self.requested = sweep, [Path(f) for f in folders], False
        self.request: dict[str, str] = {}
        self.previous: Any = None
        self.tune_handler: str | None = None
        self.active = threading.Lock()  # held from enter to exit: the watch interrupts fit() only inside it
        self.done = False

    def __enter__(self) -> _StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():
            self.tune_handler = os.environ.get(_TUNE_SIGINT)
            os.environ[_TUNE_SIGINT] = "1"  # read when fit() starts
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.request = request_cancel(self.sweep, by="Ctrl-C of launcher ")
        threading.Thread(target=self._end_when_stopped, name="ctrl-c", daemon=True).start()
        said = "interrupted: each trial checkpoints at its next step and stops (Ctrl-C again to stop at once)"
        print(f"\n{said}", file=sys.stderr, flush=True)

    def _end_when_stopped(self) -> None:
        """Tune waits for ever for trials no node can start (or an autoscaler's node): once none of the
        launch's trials has run for 3 s, fit() is interrupted, as a second Ctrl-C would."""
        quiet = 0
        while quiet < 3:
            time.sleep(1)
            quiet = 0 if any(observe(f).state == "running" for f in self.folders) else quiet + 1
        with self.active:
            if not self.done:
                _thread.interrupt_main()  # our handler raises KeyboardInterrupt in fit(): exit 130

    def __exit__(self, *exc: object) -> None:
        with self.active:
            self.done = True
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            if self.tune_handler is None:
                os.environ.pop(_TUNE_SIGINT, None)
            else:
                os.environ[_TUNE_SIGINT] = self.tune_handler
        if self.requested and still_ours(self.sweep, self.request):  # not a later one of orchestrator.cancel
            clear_request(self.sweep)  # withdrawn: the next launch resumes


# ---- the trainable (runs in a Ray worker) --------------------------------------------------------
def _trainable(config: dict[str, Any]) -> None:
    """Run one group of trial folders in a worker process (orchestrator.runner); report once, at the end."""
    from orchestrator.runner import Runner, make_slots  # here, not at the top: the driver never trains

    # Tune made the cwd its own trial dir; go back so relative paths resolve as for the local backend.
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    folders = [Path(f) for f in config["folders"]]
    # One slot with the cores this Tune trial asked for (not a thread per core of the node); the
    # worker inherits the GPU Ray assigned to this trial (CUDA_VISIBLE_DEVICES).
    runner = Runner(make_slots(1, cpus=config["threads"]), config["max_attempts"], fused=config.get("fused", True))
    report = runner.run([folders])
    tune.report(_final_metrics(folders, report.user_errors))


def _final_metrics(folders: list[Path], user_errors: list[str]) -> dict[str, Any]:
    """One report per group: each member's state, error, last test accuracy and csi_mean."""
    import pyarrow.parquet as pq

    states = [observe(f) for f in folders]
    summary = sorted({s.state for s in states})
    metrics: dict[str, Any] = {"state": ", ".join(f"{sum(s.state == x for s in states)} {x}" for x in summary), "user_errors": user_errors}
    for folder, st in zip(folders, states):
        metrics[f"{folder.name}/state"] = st.state
        metrics[f"{folder.name}/error"] = st.error
        if (folder / EPOCHS).exists():
            last = pq.read_table(folder / EPOCHS, columns=["test_acc", "csi_mean"]).to_pylist()[-1:]
            metrics.update({f"{folder.name}/{k}": v for k, v in (last[0] if last else {}).items()})
    return metrics


# ---- starting or joining Ray ------------------------------------------------------------------------
def _check_profile(profile: RayProfile, devices: set[str]) -> None:
    if profile.address is not None:
        local_only = [k for k in ("num_cpus", "num_gpus", "temp_dir") if getattr(profile, k) is not None]
        if local_only:
            keys = ", ".join(f"'{k}'" for k in local_only)
            raise ProfileError(f"key(s) {keys} apply to a local Ray only, and key 'address' joins a cluster; allowed: one or the other")
    if profile.gpus_per_trial == 0 and any(d.startswith("cuda") for d in devices):
        raise ProfileError(
            "key 'gpus_per_trial' is 0 but the trials' device is cuda (Ray hides GPUs from such trials); allowed: above 0, or device auto"
        )
    if any(d.startswith("cuda:") for d in devices):
        raise ProfileError("a trial's device names a GPU (cuda:N) but Ray picks each trial's GPU; allowed: device auto or cuda")


def _check_local_fits(profile: RayProfile) -> None:
    """A trial bigger than the private local Ray would wait for ever in Tune's queue: refuse it first.

    The local Ray gets `num_cpus`/`num_gpus`, else what Ray itself counts on this machine (cgroup
    CPU limits, CUDA_VISIBLE_DEVICES), read with Ray's own functions so that the two agree. They are
    Ray's private API: where they moved, nothing is refused here and run_ray checks on the live Ray.
    """
    if ray.is_initialized():  # a caller's own Ray (a notebook), maybe a cluster: run_ray checks that one
        return
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        gpu = get_accelerator_manager_for_resource("GPU")
        if gpu is None:
            return
        visible = gpu.get_current_process_visible_accelerator_ids()
        gpus = gpu.get_current_node_num_accelerators() if visible is None else len(visible)
        cpus = get_num_cpus()
    except (ImportError, AttributeError, TypeError, ValueError, OSError):
        return
    if profile.num_gpus is not None and visible is not None and profile.num_gpus > len(visible):
        env = gpu.get_visible_accelerator_ids_env_var()
        raise ProfileError(
            f"key 'num_gpus' is {profile.num_gpus}: more GPUs than {env} shows ({len(visible)}); allowed: at most {len(visible)}"
        )
    have = {"CPU": float(profile.num_cpus if profile.num_cpus is not None else cpus),
            "GPU": float(profile.num_gpus if profile.num_gpus is not None else gpus)}  # fmt: skip
    for key, field, need, given in (
        ("CPU", "cpus_per_trial", profile.cpus_per_trial, "num_cpus" if profile.num_cpus is not None else None),
        ("GPU", "gpus_per_trial", profile.gpus_per_trial, "num_gpus" if profile.num_gpus is not None else None),
    ):
        if need > have[key]:
            source = f"key '{given}'" if given else "what this machine has"
            raise ProfileError(
                f"key '{field}' is {need:g}: more {key}s than the local Ray has ({have[key]:g}, {source}), so no trial would "
                f"ever start; allowed: at most {have[key]:g}, or a Ray cluster (key 'address')"
            )


def too_small(need: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why no node among `nodes` (each its Ray resources) can hold a trial needing `need`; None if one can."""
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return None
    words = lambda r: " and ".join(f"{r.get(k, 0.0):g} {k}" for k in need)
    shapes = Counter(words(node) for node in nodes)
    have = "; ".join(f"{n} x {shape}" for shape, n in shapes.most_common(5)) + ("; ..." if len(shapes) > 5 else "")
    return f"no live node has {words(need)} for one trial (the nodes: {have or 'none'})"


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
            _temp_dir=profile.temp_dir or private, logging_level=logging.WARNING,
        )  # fmt: skip
        return True, private
    _check_reachable(profile.address)
    try:
        ray.init(address=profile.address, logging_level=logging.WARNING, runtime_env=_runtime_env(ship_code=False))
    except ConnectionError as err:
        reason = str(err).splitlines()[0]
        raise UserError(f"ray cluster {profile.address}: cannot connect ({reason}); is it up (`ray status` on its head)?") from None
    try:
        probes = _probe_nodes(str(sweep))
        if probes is None or any(fingerprint != _code_fingerprint() for _, fingerprint, _ in probes):
            # A node lacks this code or runs another version of it: ship the two packages with the job.
            print("ray: shipping trainer/ and orchestrator/ to the workers (runtime_env py_modules)", file=sys.stderr)
            ray.shutdown()
            ray.init(address=profile.address, logging_level=logging.WARNING, runtime_env=_runtime_env(ship_code=True))
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


def _runtime_env(ship_code: bool) -> dict[str, Any] | None:
    """The job's runtime_env on a cluster: the project's code where a node lacks it, and the trackers'
    settings of the launcher's environment. A node's processes have the environment of its `ray
    start`, so MLFLOW_TRACKING_URI, WANDB_MODE or WANDB_PROJECT set for the launcher never reached the
    trials (their MLflow runs went to a new mlflow.db in the launcher's folder)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "WANDB_")) or k == "SWEEP_TRACKERS_WAIT_S"}
    out: dict[str, Any] = {"py_modules": [str(p) for p in _PACKAGES]} if ship_code else {}
    if env:
        out["env_vars"] = env
    return out or None


def _check_reachable(address: str) -> None:
    """ray.init waits for minutes on a host:port where nothing listens; a TCP connect answers at once.

    `auto` means the cluster RAY_ADDRESS names when it is set (scripts/ray_in_slurm.sbatch sets it).
    """
    if address == "auto" and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    host, _, port = address.rpartition(":")
    if host and port.isdigit() and "://" not in address:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()  # [IPv6]:port
        except OSError as err:
            raise ProfileError(f"key 'address' is {address!r}: nothing answers there ({err}); allowed: {_ADDRESS_ALLOWED}") from None


_ADDRESS_ALLOWED = "the address of a running Ray cluster (`ray status` on its head prints it), or leave it out for a local Ray"
_CONNECT_CODE = "import logging, sys, ray; ray.init(address=sys.argv[1], logging_level=logging.ERROR); ray.shutdown()"


def _check_connects(address: str, timeout_s: float = _CONNECT_TIMEOUT_S) -> None:
    """A driver joins `address` in a child process, bounded, before anything is written.

    In the launcher itself ray.init on a port where something else listens (a web server, a wrong
    port) retried for minutes, deaf to SIGTERM, after the trial folders were written; `auto` with
    no cluster and a `ray://` with nothing behind it failed only there too, naming no key.
    """
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    child = subprocess.Popen([sys.executable, "-c", _CONNECT_CODE, address], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, start_new_session=True)  # fmt: skip
    try:
        _, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise ProfileError(
            f"key 'address' is {address!r}: no Ray cluster answered there within {timeout_s:g} s (a port that is not Ray's?); "
            f"allowed: {_ADDRESS_ALLOWED}"
        ) from None
    if child.returncode != 0:
        lines = [line.strip() for line in err.splitlines() if line.strip()]
        said = next((line for line in reversed(lines) if "Error" in line.split(":")[0]), lines[-1] if lines else "no output")
        raise ProfileError(f"key 'address' is {address!r}: cannot join it ({said[:300]}); allowed: {_ADDRESS_ALLOWED}")


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
    """A trial no node can hold waits in Tune's queue for ever: on a local Ray, refuse; on a cluster, say so.

    A cluster may grow (an autoscaler adds nodes for the waiting trials), so there it is one line
    and the launch goes on; the preflight refused the local case already, before anything was written.
    """
    need = {"CPU": profile.cpus_per_trial, "GPU": profile.gpus_per_trial}
    why = too_small(need, [{k: float(v) for k, v in node["Resources"].items()} for node in ray.nodes() if node["Alive"]])
    if why is None:
        return
    if profile.address is None:
        raise UserError(f"ray: {why}; lower cpus_per_trial or gpus_per_trial")
    print(
        f"ray: cluster {profile.address}: {why}; Tune waits until such a node joins (an autoscaler may add one): "
        "lower cpus_per_trial or gpus_per_trial, or stop with Ctrl-C",
        file=sys.stderr,
        flush=True,
    )


# ---- naming, progress, summary ----------------------------------------------------------------------
def _trial_id(trial: Any) -> str:
    """Tune's name of a group: its first trial's id, and how many more train with it."""
    folders = trial.config["folders"]
    return Path(folders[0]).name + (f"+{len(folders) - 1}" if len(folders) > 1 else "")


class _ProgressCallback(tune.Callback):
    """The launcher's one-line progress, fed from the trial folders as Tune finishes trials."""

    def __init__(self, progress: Progress) -> None:
        self.total = progress.total
        self.finished: dict[str, TrialState] = {}
        self.progress: Progress | None = progress

    def _update(self, trials: list[Any], trial: Any, event: str) -> None:
        self.progress = self.progress or Progress(self.total, "ray")
        for folder in trial.config["folders"]:
            state = observe(Path(folder))
            self.finished[state.trial_id] = state
        running = sum(t.status == "RUNNING" for t in trials if t is not trial)
        self.progress.show(self.finished.values(), running, f"{_trial_id(trial)} {event}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trials, trial, (trial.last_result or {}).get("state", "ended"))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trials, trial, f"errored after {trial.num_failures} failures")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        tid, n = _trial_id(trial), trial.num_failures
        print(f"ray: {tid}: its Ray worker was lost (failure {n}); restarting from its checkpoint", file=sys.stderr)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "progress": None}  # Tune pickles its callbacks; a stream does not pickle


def _print_summary(folders: list[str]) -> None:
    """Counts, every failure with its reason, and every restart the trial folders recorded."""
    states = [observe(Path(f)) for f in folders]
    counts = {s: sum(st.state == s for st in states) for s in ("done", "failed", "running", "interrupted", "pending")}
    print("ray: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for st in states:
        if st.status.last_interruption:
            print(f"  {st.trial_id}: {st.status.last_interruption}; restarted from its checkpoint", file=sys.stderr)
        if st.state == "failed":
            print(f"  {st.trial_id} failed after {st.attempts} attempt(s): {st.error}")
