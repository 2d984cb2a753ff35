"""Optional live curves per trial: TensorBoard, Weights & Biases, MLflow. The Parquet files stay the record.

    feed = Feed(trials, steps_per_epoch, say=print)   # trials: (spec, folder, rows) with spec.trackers set
    feed.send()                                       # after each epoch's checkpoints: the rows not yet sent
    feed.close()                                      # at the attempt's end: drain, bounded in time

Switched on by the trial field (or profile key) `trackers: [tensorboard, wandb, mlflow]`; this
module and the tracker packages (`pip install -e ".[trackers]"`) are imported only then. What
goes where (docs/results.md#trackers):

    tensorboard  event files in the trial folder (run = trials/<id>); hparams = the trial's fields
    wandb        id = name = trial id, group = sweep, config = fields, resume="allow"; WANDB_MODE,
                 WANDB_PROJECT (default selectivity-sweep) from the environment; files under the trial folder
    mlflow       experiment = sweep, run name = trial id, params = fields; MLFLOW_TRACKING_URI from
                 the environment (MLflow's default store otherwise); the run's id is kept in the trial
                 folder (tracker_runs.json): a resume continues it, a new folder (another results
                 folder, a trial trained anew) gets a new run

Scalars per epoch with step = epoch: train/{loss,ce,selectivity,acc}, test/{loss,acc,top5},
csi/mean (network) and csi/<layer>, lr, alpha_active, images_per_s. Early-dynamics evaluations
(mid-epoch) go under early/... with step = the optimizer step (epoch = step / steps per epoch).

Never in the way of a trial: every tracker call runs in a background thread (one per kind), so
training only hands over copies of rows; a tracker that is missing, misconfigured or raising
prints one warning in the trial's log and is off for the rest of the attempt; close() waits at
most CLOSE_S (or $SWEEP_TRACKERS_WAIT_S) seconds. A resumed or requeued trial continues the
same run: `trackers.json` in the trial folder records
the last step each tracker has for sure (TensorBoard, MLflow: after each call; W&B, whose
service process writes asynchronously: after finish()), and rows up to it are not sent again;
rows a kill left unsent are sent at the next start, from the trial's Parquet rows. W&B gets the
optimizer step as its step, so online it drops a point it already had; offline, each attempt is
its own run folder, and `wandb sync` of a killed attempt's folder may repeat points.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from trainer import results as R
from trainer.spec import TrialSpec

MARKS = "trackers.json"
LEFT_BEHIND = threading.Event()  # a tracker thread outlived its bound in this process
CLOSE_S = 30.0  # the longest an ending attempt waits for its trackers (a W&B upload, a slow store)
CLOSE_ENV = "SWEEP_TRACKERS_WAIT_S"  # a site with a slow network or store may allow more
EPOCH_KEYS = {
    "train_loss": "train/loss", "train_ce": "train/ce", "train_selectivity": "train/selectivity", "train_acc": "train/acc",
    "test_loss": "test/loss", "test_acc": "test/acc", "test_top5": "test/top5", "csi_mean": "csi/mean",
    "lr": "lr", "alpha_active": "alpha_active", "images_per_s": "images_per_s",
}  # fmt: skip


class Rows(Protocol):
    """What a trial's ResultLog offers: its rows so far, per result file."""

    tables: dict[str, list[Any]]


# (the row's optimizer step: what trackers.json remembers, the tracker's step, {name: value}, epoch as a fraction)
Points = list[tuple[int, int, dict[str, float], float]]


class Tracker(Protocol):
    durable: bool

    def open(self, spec: TrialSpec, folder: Path, first: bool) -> None: ...
    def log(self, step: int, values: dict[str, float], epoch: float, row_step: int) -> None: ...
    def close(self) -> None: ...


class TensorBoard:
    durable = True  # log() returns once the points are flushed to the event file

    def open(self, spec: TrialSpec, folder: Path, first: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(folder), flush_secs=5)
        if first:  # the hparams panel: once per run, with the metrics it tabulates
            fields = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in spec.row_fields().items()}
            for summary in hparams(fields, {"test/acc": 0.0, "csi/mean": 0.0}):
                self.writer._get_file_writer().add_summary(summary)

    def log(self, step: int, values: dict[str, float], epoch: float, row_step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    # run.log() hands points to W&B's service process, which a SIGKILL of ours can leave unwritten:
    # they count as logged only once finish() returned (until then a restart sends them again).
    durable = False

    def open(self, spec: TrialSpec, folder: Path, first: bool) -> None:
        import wandb

        self.run = wandb.init(
            id=spec.trial_id, name=spec.trial_id, group=spec.sweep, config=spec.row_fields(), resume="allow",
            project=os.environ.get("WANDB_PROJECT", "selectivity-sweep"), dir=str(folder), reinit="create_new",
        )  # fmt: skip
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")  # charts over epochs, early dynamics at their fractions

    def log(self, step: int, values: dict[str, float], epoch: float, row_step: int) -> None:
        # W&B's step must only grow: the optimizer step (epoch ends and mid-epoch points in order); it drops a step it already has.
        self.run.log({**values, "epoch": epoch}, step=row_step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    durable = True  # log_batch() returns once the store has the points

    def open(self, spec: TrialSpec, folder: Path, first: bool) -> None:
        import mlflow
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        with _store_lock(mlflow.get_tracking_uri()):  # MLFLOW_TRACKING_URI, else MLflow's default store
            self.client = client = MlflowClient()  # a new store's tables are made here or at the first call
            experiment = client.get_experiment_by_name(spec.sweep)
            if experiment is None:
                with contextlib.suppress(Exception):  # another trial created it meanwhile (a server: no lock across machines)
                    client.create_experiment(spec.sweep)
                experiment = client.get_experiment_by_name(spec.sweep)
        if experiment is None:
            raise RuntimeError(f"MLflow has no experiment {spec.sweep!r} and could not create it")
        eid = experiment.experiment_id
        recorded = _read_run(folder, "mlflow")
        if recorded is None and not first:  # a folder from before run ids were recorded: its run by name
            runs = client.search_runs([eid], filter_string=f"tags.mlflow.runName = '{spec.trial_id}'", max_results=1)
            recorded = runs[0].info.run_id if runs else None
        if recorded is not None:  # a resumed trial continues its own run
            self.run_id = recorded
            client.update_run(self.run_id, status="RUNNING")
        else:  # never by name: the same trial in another results folder, or trained anew, is another run
            self.run_id = client.create_run(eid, run_name=spec.trial_id).info.run_id
            _write_run(folder, "mlflow", self.run_id)
            params = [Param(k, str(v)[:500]) for k, v in spec.row_fields().items()]
            client.log_batch(self.run_id, params=params)

    def log(self, step: int, values: dict[str, float], epoch: float, row_step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


KINDS: dict[str, Callable[[], Tracker]] = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def points(epoch_rows: list[dict[str, Any]], layer_rows: list[dict[str, Any]], steps_per_epoch: int) -> Points:
    """The tracker points of some rows: one per evaluation, keyed by its step (epoch, or optimizer step if early)."""
    csi: dict[int, dict[str, float]] = {}
    for row in layer_rows:
        csi.setdefault(row["step"], {})[f"csi/{row['layer']}"] = row["csi_mean"]
    out: Points = []
    for row in epoch_rows:
        values = {name: float(row[col]) for col, name in EPOCH_KEYS.items() if _finite(row.get(col))}
        values.update(csi.get(row["step"], {}))
        step = int(row["step"])
        if row["epoch_end"]:
            out.append((step, int(row["epoch"]), values, float(row["epoch"])))  # TB, MLflow: step = epoch
        else:
            out.append((step, step, {f"early/{k}": v for k, v in values.items()}, step / steps_per_epoch))
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Feed:
    """The trackers of a group's trials, fed from a background thread per kind of tracker."""

    def __init__(self, trials: Sequence[tuple[TrialSpec, Path, Rows]], steps_per_epoch: int, say: Callable[[str], None]) -> None:
        self.trials = [(s, Path(f), rows) for s, f, rows in trials if s.trackers]
        self.steps, self.say = max(steps_per_epoch, 1), say
        self.sent: dict[str, int] = {}  # trial id -> optimizer step of the last row handed over
        self.marks = {s.trial_id: _read_marks(f) for s, f, _ in self.trials}  # trial id -> {kind: last row step logged}
        self.lock = threading.Lock()  # the threads share trackers.json
        self.open: dict[tuple[str, str], Tracker | None] = {}  # (trial id, kind) -> tracker; None: off for this attempt
        # One thread per kind: a slow tracker (a W&B start, a new SQLite store) never holds up the others.
        self.queues: dict[str, queue.Queue[tuple[TrialSpec, Path, Points] | None]] = {}
        self.threads: list[threading.Thread] = []
        for kind in dict.fromkeys(k for s, _, _ in self.trials for k in s.trackers):
            self.queues[kind] = queue.Queue()
            self.threads.append(threading.Thread(target=self._work, args=(kind,), name=f"tracker-{kind}", daemon=True))
            self.threads[-1].start()  # daemon: a hung tracker never holds up the process's exit

    def send(self) -> None:
        """Hand the rows each trial wrote since the last send to the threads (never blocks, never raises)."""
        for spec, folder, rows in self.trials:
            try:
                epochs = [r for t in rows.tables[R.EPOCHS] for r in t.to_pylist()]
                last = self.sent.get(spec.trial_id, -1)
                new = [r for r in epochs if r["step"] > last]
                if not new:
                    continue
                layers = [r for t in rows.tables[R.LAYERS] for r in t.to_pylist() if r["step"] > last]
                self.sent[spec.trial_id] = max(r["step"] for r in new)
                for kind in spec.trackers:
                    self.queues[kind].put((spec, folder, points(new, layers, self.steps)))
            except Exception as err:  # noqa: BLE001 - a display must not end a trial
                self.say(f"trackers: {spec.trial_id}: rows not sent ({type(err).__name__}: {err})")

    def close(self, timeout_s: float | None = None) -> None:
        if timeout_s is None:
            try:
                timeout_s = float(os.environ.get(CLOSE_ENV, CLOSE_S))
            except ValueError:
                timeout_s = CLOSE_S
        for q in self.queues.values():
            q.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                LEFT_BEHIND.set()  # the worker then ends without the package's exit hooks (trainer.cli.exit_worker)
                self.say(f"trackers: {thread.name} still busy after {timeout_s:g} s; left behind (the results are complete)")

    # ---- the threads --------------------------------------------------------------------------------
    def _work(self, kind: str) -> None:
        pending: dict[str, int] = {}  # trial id -> last row step logged but not yet durable (W&B: until finish)
        while (item := self.queues[kind].get()) is not None:
            spec, folder, pts = item
            marks = self.marks[spec.trial_id]
            for row_step, step, values, epoch in pts:
                if row_step <= marks.get(kind, -1):
                    continue  # logged by an earlier attempt: no duplicate point
                tracker = self._tracker(spec, folder, kind, first=kind not in marks)
                if tracker is not None and self._call(spec, kind, functools.partial(tracker.log, step, values, epoch, row_step)):
                    if tracker.durable:
                        self._mark(spec.trial_id, folder, kind, row_step)  # at once: a kill now repeats no point
                    else:
                        pending[spec.trial_id] = row_step
        for (tid, k), tracker in list(self.open.items()):
            if tracker is not None and k == kind:
                spec, folder, _ = next(t for t in self.trials if t[0].trial_id == tid)
                if self._call(spec, kind, tracker.close) and tid in pending:
                    self._mark(tid, folder, kind, pending[tid])

    def _mark(self, tid: str, folder: Path, kind: str, row_step: int) -> None:
        with self.lock:
            self.marks[tid][kind] = row_step
            _write_marks(folder, self.marks[tid])

    def _tracker(self, spec: TrialSpec, folder: Path, kind: str, first: bool) -> Tracker | None:
        key = (spec.trial_id, kind)
        if key not in self.open:
            tracker = KINDS[kind]()
            ok = self._call(spec, kind, lambda: tracker.open(spec, folder, first))
            self.open[key] = tracker if ok else None
        return self.open[key]

    def _call(self, spec: TrialSpec, kind: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
            return True
        except BaseException as err:  # noqa: BLE001 - a tracker's failure (even SystemExit) is never the trial's
            if self.open.get((spec.trial_id, kind), True) is not None:
                hint = ' (pip install -e ".[trackers]")' if isinstance(err, ImportError) else ""
                why = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}{hint}"  # one line: SQLAlchemy's have several
                self.say(f"warning: tracker {kind} for trial {spec.trial_id}: {why}; off for this attempt, the results are unaffected")
            self.open[(spec.trial_id, kind)] = None
            return False


RUNS = "tracker_runs.json"  # {kind: run id} of the trial folder's runs (MLflow), moved aside with the folder's files


def _read_run(folder: Path, kind: str) -> str | None:
    try:
        data = json.loads((folder / RUNS).read_text())
    except (OSError, ValueError):
        return None
    run = data.get(kind) if isinstance(data, dict) else None
    return run if isinstance(run, str) else None


def _write_run(folder: Path, kind: str, run_id: str) -> None:
    try:
        data = json.loads((folder / RUNS).read_text())
    except (OSError, ValueError):
        data = {}
    R.write_json({**(data if isinstance(data, dict) else {}), kind: run_id}, folder / RUNS)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An SQLite store's first use creates its tables (MLflow's migrations): two workers doing it at
    once lost their runs, and once left a store MLflow cannot open again ("table _alembic_tmp_params
    already exists"). An flock beside the database file makes them take turns; other stores: no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///").split("?")[0])
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        handle = open(f"{database}.lock", "a")  # noqa: SIM115 - held across the yield
    except OSError:
        yield  # a read-only place: MLflow says what is wrong
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read_marks(folder: Path) -> dict[str, int]:
    try:
        data = json.loads((folder / MARKS).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}


def _write_marks(folder: Path, marks: dict[str, int]) -> None:
    with contextlib.suppress(OSError):  # a full disk: the trial's own writes will say so
        R.write_json(marks, folder / MARKS)
