"""The trial spec: one frozen, typed record of everything a trial is.

A grid may only name fields of `TrialSpec`; `TrialSpec.from_dict` is strict (unknown field, wrong
type, bad value: one `SpecError` line that says what is allowed). `trial_id` hashes the science
fields only, so the same trial gets the same folder on every machine and backend, whatever GPU,
worker count or data root it ran with.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.errors import UserError
from trainer.registry import DATASET_NAMES, DATASETS, MODEL_NAMES, MODELS


class SpecError(UserError):
    """A user mistake in a trial spec; its message is one line, ready to print."""


# Each field's role sits beside it (metadata "role"); the sets below are derived from them.
#   science   in the trial id; trials that train fused must agree on it
#   member    in the trial id; may differ between the members of a fused group (trainer.group)
#   later     science added after the first release: in the trial id only when set away from its
#             default, so every trial id from before stays valid
#   label     names a trial or keeps extra files; never changes its numbers, not in the trial id
#   resource  where and how fast a trial runs, never what it computes; not in the trial id
ROLES = ("science", "member", "later", "label", "resource")


def _field(default: Any, role: str) -> Any:
    return dataclasses.field(default=default, metadata={"role": role})


# Fields that identify a trial in every result row, in this order (the rest of the science follows).
ROW_ID_FIELDS = ("trial_id", "sweep", "model", "dataset", "alpha", "seed", "onset_epoch", "offset_epoch")
LR_SCHEDULES = ("step", "cosine")
_DEFAULT_LR_GAMMA = 0.1  # the step schedule's factor; also what a cosine trial's spec holds
SI_POOLINGS = ("layers", "stages")
SI_CLASS_STATS = ("mean", "sum")
LOADERS = ("auto", "dali", "nvjpeg", "torchvision")
ABLATION_RANDOM_MASKS = ("fixed", "per_batch", "both")  # as trainer.analysis.ablation.RANDOM_MASKS
TRACKERS = ("tensorboard", "wandb", "mlflow")
# Fields held as tuples in the spec and written as JSON lists.
_TUPLE_FIELDS = (
    "lr_milestones",
    "keep_checkpoints",
    "ablation_fractions",
    "ablation_counts",
    "ablation_count_steps",
    "si_skip_stages",
    "trackers",
)
INPUT_NORMS = ("dataset", "half")  # as trainer.data.INPUT_NORMS (this module does not import torch)
MAX_EPOCHS = 10_000  # beyond any real run; a typo like 1000000000 must not allocate per-epoch state
MAX_SEED = 2**32 - 1  # numpy's seed range; torch's generators take seed * 1_000_003 + epoch (< 2**64)
DEVICE = re.compile(r"auto|cpu|cuda|cuda:\d{1,3}")  # the `device` field (the after-training commands' --device too)
MAX_DRAWS = 1_000  # random ablation draws per (epoch, stage, k)
MAX_WORKERS = 256  # DataLoader workers per trial
MAX_THREADS = 1_024  # torch intra-op threads per trial


@dataclass(frozen=True)
class TrialSpec:
    """One training run. Defaults give a digits trial that runs anywhere in seconds."""

    sweep: str = _field("adhoc", "label")
    model: str = _field("resnet20", "science")
    dataset: str = _field("digits", "science")
    # Selectivity regularizer (docs/science.md): loss = CE - alpha(epoch) * SI_batch, alpha active
    # for onset_epoch <= epoch < offset_epoch (None: to the end).
    alpha: float = _field(0.0, "member")
    onset_epoch: int = _field(0, "member")
    offset_epoch: int | None = _field(None, "member")
    seed: int = _field(0, "member")
    # Optimisation: SGD with momentum; step schedule multiplies lr by lr_gamma at each milestone.
    epochs: int = _field(10, "science")
    batch_size: int = _field(128, "science")
    lr: float = _field(0.1, "science")
    momentum: float = _field(0.9, "science")
    weight_decay: float = _field(5e-4, "science")
    lr_schedule: str = _field("step", "science")
    lr_milestones: tuple[int, ...] | None = _field(None, "science")  # None: at 50% and 75% of the epochs
    lr_gamma: float = _field(_DEFAULT_LR_GAMMA, "science")  # step only: cosine trials keep the default (one trial_id)
    augment: bool = _field(True, "science")
    # Early dynamics (Ranadive et al.): also evaluate every N optimizer steps during training
    # epochs 1..eval_until_epoch (0: only at the end of each epoch).
    eval_every_steps: int = _field(0, "later")
    eval_until_epoch: int = _field(0, "later")
    # Form of the regularizer's SI_batch (docs/science.md): the defaults are Leavitt & Morcos's
    # (layers weigh equally, class means, eps 1e-7); Ranadive et al.'s ResNet-50 runs used stage
    # pooling, the last stage left out, and class sums (with eps 1e-6). The reported CSI is the
    # class-mean definition whatever the form.
    si_pooling: str = _field("layers", "later")  # layers | stages
    si_skip_last_stage: bool = _field(False, "later")
    # Stage numbers (1-based) left out of SI_batch; null: none. Ranadive et al.'s VGG16 CIFAR code
    # leaves out stages 5 and 6 (the last conv group and the classifier layers).
    si_skip_stages: tuple[int, ...] | None = _field(None, "later")
    si_class_stat: str = _field("mean", "later")  # mean | sum
    # Input normalisation: the data set's channel statistics, or 0.5 / 0.5 (Ranadive et al.'s CIFAR recipe).
    input_norm: str = _field("dataset", "later")  # dataset | half
    # Epochs whose checkpoints are kept for analysis (ablations) beside the rolling resume
    # checkpoint; None: 0 to 15, then every 10 (as Ranadive et al.); []: none.
    keep_checkpoints: tuple[int, ...] | None = _field(None, "label")
    # Channel ablation of the kept checkpoints at the end of the trial, in the same job (so it
    # runs on every backend; trainer/analysis/ablation.py): k channels of each stage zeroed, k from
    # fractions of the stage's width, absolute counts, and/or Ranadive et al.'s schedule
    # [a, b]: k in range(0, C/2, a) and range(C/2, C+1, b); all None: no ablation.
    ablation_fractions: tuple[float, ...] | None = _field(None, "label")
    ablation_counts: tuple[int, ...] | None = _field(None, "label")
    ablation_count_steps: tuple[int, ...] | None = _field(None, "label")
    ablation_draws: int = _field(3, "label")  # random draws per (epoch, stage, k)
    ablation_images: int | None = _field(None, "label")  # a seeded subset of the test set; None: all of it
    # Random ablation masks: fixed (one per draw), per_batch (a new one every test batch, as Ranadive
    # et al.'s ablations.py; rows selection "random_batch"), or both.
    ablation_random_masks: str = _field("fixed", "label")
    # Representation job at the end of the trial (trainer/analysis/representation_job.py, docs/analysis.md): each kept
    # checkpoint's per-layer activations on a fixed seeded subset of the test set (represent_images
    # images; None: all up to 10,000, ImageNet 5,000), stored for CKA / PWCCA, and their dimensionality.
    represent: bool = _field(False, "label")
    represent_images: int | None = _field(None, "label")
    # Images per minibatch of Ranadive et al.'s minibatch CKA (trainer/analysis/minibatch_cka_job.py; theirs: 64).
    cka_batch_size: int = _field(64, "label")
    # Robustness job at the end of the trial (trainer/analysis/robustness_job.py, docs/analysis.md): the final
    # network's accuracy under corruptions and attacks, and the dimensionality of the change, on
    # robust_images test images (None: 1,000) for the attacks and the analyses.
    robust: bool = _field(False, "label")
    robust_images: int | None = _field(None, "label")
    device: str = _field("auto", "resource")  # auto | cpu | cuda | cuda:N
    num_workers: int = _field(0, "resource")  # DataLoader workers, streaming data sets only
    data_root: str | None = _field(None, "resource")  # None: $SWEEP_DATA_ROOT, else ./data
    # torch.compile the network (GPU runs of many epochs): one compilation per process and input
    # shape, reused by every later trial and group of the same shapes in that process.
    compile: bool = _field(False, "resource")
    # How image files are decoded (ImageNet): dali (JPEG decode on the GPU), nvjpeg (on the GPU
    # with torchvision, no DALI), torchvision (CPU worker processes), auto (dali when it is
    # installed and the device is a GPU, else nvjpeg on a GPU, else torchvision).
    loader: str = _field("auto", "resource")
    cache_dir: str | None = _field(None, "resource")  # data set manifests; None: $SWEEP_CACHE_DIR, else ~/.cache/selectivity-sweep
    # torch's intra-op threads in the trial's process (trainer/threads.py): a fixed count, so the
    # trial's numbers do not depend on how many workers a launch put on a machine; None: 1 on
    # CPU, the launcher's count on a GPU (whose arithmetic does not use them).
    threads: int | None = _field(None, "resource")
    # Live curves in the tools users watch (trainer/trackers.py, docs/results.md): a copy of the
    # rows, never the record; a resource, so switching them on never changes a trial id.
    trackers: tuple[str, ...] = _field((), "resource")  # tensorboard | wandb | mlflow

    def __post_init__(self) -> None:
        _check_values(self)
        if self.alpha == 0.0 and (self.onset_epoch, self.offset_epoch) != (0, None):
            # alpha = 0 trains the same whatever the onset: one canonical form, so the
            # unregularized arm of an onset grid (alpha x onset) collapses into one trial_id.
            object.__setattr__(self, "onset_epoch", 0)
            object.__setattr__(self, "offset_epoch", None)
        if self.alpha == 0.0:
            object.__setattr__(self, "alpha", 0.0)  # -0.0 would hash differently
        if self.offset_epoch == self.epochs:  # regularized to the end: what null says
            object.__setattr__(self, "offset_epoch", None)
        if self.lr_schedule != "step" and (self.lr_milestones, self.lr_gamma) != (None, _DEFAULT_LR_GAMMA):
            # The cosine schedule reads neither (trainer.loop.lr_at): trials that differ only in them
            # train the same, so they are one trial_id, not several identical runs.
            object.__setattr__(self, "lr_milestones", None)
            object.__setattr__(self, "lr_gamma", _DEFAULT_LR_GAMMA)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "spec") -> TrialSpec:
        """Build a spec from plain data (JSON/YAML), rejecting unknown fields and wrong types.

        `where` names the source (a file) in error messages.
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: a trial spec must be a mapping of field: value, got {type(data).__name__}")
        allowed, fast = _field_set(), _unchanged_types()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in allowed:
                raise SpecError(f"{where}: unknown field {quote(key)}; allowed: {', '.join(field_names())}")
            kwargs[key] = value if type(value) in fast[key] else coerce(key, value, where)  # see _unchanged_types
        try:
            return cls._of_fields(kwargs)
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None

    @classmethod
    def _of_fields(cls, fields: dict[str, Any]) -> TrialSpec:
        """`cls(**fields)` for fields already coerced, in a third of the time (issue 25: status reads 10,000 specs).

        Passing ~50 keyword arguments to the generated __init__ (matched name by name, then set one
        by one through object.__setattr__) cost ~30 us a spec; this fills the same __dict__, every
        field from its default then from `fields`, and runs the same __post_init__ (checks, canonical
        form). tests/test_spec.py checks it against the constructor.
        """
        spec = object.__new__(cls)
        spec.__dict__.update(_DEFAULTS)
        spec.__dict__.update(fields)
        spec.__post_init__()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists)."""
        out = {name: getattr(self, name) for name in _FIELD_NAMES}  # not asdict: it deep-copies (slow)
        for key in _TUPLE_FIELDS:
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    # ---- identity -----------------------------------------------------------------------
    @functools.cached_property
    def trial_id(self) -> str:
        """Stable 12-hex-digit hash of the science fields (resources and labels excluded)."""
        science = {}
        for k in _ID_FIELDS:  # as to_dict gives them (tuples as lists), without the fields it drops
            v = getattr(self, k)
            if k in _TUPLE_SET and v is not None:
                v = list(v)
            if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k]):
                science[k] = v
        blob = _ID_JSON.encode(science)  # json.dumps(science, sort_keys=True, separators=(",", ":")), its encoder made once
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def row_fields(self) -> dict[str, Any]:
        """The trial's fields as carried by every result row.

        The identifying fields first, then the other science fields; the spec's `lr` is the base
        learning rate and is renamed `base_lr` because epochs.parquet has a per-epoch `lr` column.
        """
        d = self.to_dict()
        out: dict[str, Any] = {"trial_id": self.trial_id}
        out.update({k: d[k] for k in ROW_ID_FIELDS[1:]})
        for k, v in d.items():
            if k not in out and k in IN_TRIAL_ID:
                out["base_lr" if k == "lr" else k] = v
        return out

    def fuse_key(self) -> tuple[tuple[str, str], ...] | None:
        """Trials with equal keys can train fused (trainer.group); None: this one trains alone."""
        if not MODELS[self.model].fusable:
            return None
        d = self.to_dict()
        return tuple((k, repr(d[k])) for k in sorted(d) if k not in PER_MEMBER_FIELDS)

    # ---- derived schedule ---------------------------------------------------------------
    def alpha_at(self, epoch: int) -> float:
        """alpha(epoch): alpha inside [onset, offset), else 0."""
        active = self.onset_epoch <= epoch and (self.offset_epoch is None or epoch < self.offset_epoch)
        return self.alpha if active else 0.0

    def milestones(self) -> tuple[int, ...]:
        # Milestones spelled out stay another trial than null even where they equal today's default
        # (tests/test_spec.py): null follows this rule, written ones do not.
        if self.lr_milestones is not None:
            return self.lr_milestones
        # At 50% and 75% of training; short runs drop a milestone at epoch 0 or a repeated one.
        return tuple(sorted({m for m in (self.epochs // 2, (self.epochs * 3) // 4) if m > 0}))

    def kept_epochs(self) -> frozenset[int]:
        """Epochs (0 = the initialised network) whose checkpoints are kept for analysis."""
        if self.keep_checkpoints is not None:
            return frozenset(self.keep_checkpoints)
        return frozenset(range(min(self.epochs, 15) + 1)) | frozenset(range(20, self.epochs + 1, 10)) | {self.epochs}

    def eval_steps_in(self, epoch: int, steps_per_epoch: int) -> list[int]:
        """Steps (1-based, within 0-based training epoch `epoch`) after which to evaluate mid-epoch."""
        if self.eval_every_steps <= 0 or epoch >= self.eval_until_epoch:
            return []
        return list(range(self.eval_every_steps, steps_per_epoch, self.eval_every_steps))

    def ablates(self) -> bool:
        """Whether the trial ends with a channel ablation of its kept checkpoints."""
        return any(v is not None for v in (self.ablation_fractions, self.ablation_counts, self.ablation_count_steps))

    def resolved_data_root(self) -> str:
        """The data root on this machine: the spec's, else $SWEEP_DATA_ROOT, else ./data."""
        return self.data_root or os.environ.get("SWEEP_DATA_ROOT") or "./data"

    def data_options(self) -> dict[str, Any]:
        """The keyword arguments of trainer.data.load_dataset this trial asks for."""
        return {"num_workers": self.num_workers, "loader": self.loader, "cache_dir": self.cache_dir, "norm": self.input_norm}


# ---- the roles, derived from the fields ----------------------------------------------------
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrialSpec))
ROLE_OF: dict[str, str] = {f.name: f.metadata["role"] for f in dataclasses.fields(TrialSpec)}


def fields_with_role(*roles: str) -> frozenset[str]:
    return frozenset(name for name, role in ROLE_OF.items() if role in roles)


RESOURCE_FIELDS = fields_with_role("resource")
LABEL_FIELDS = fields_with_role("label")
IN_TRIAL_ID = fields_with_role("science", "member", "later")
LATER_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrialSpec) if f.metadata["role"] == "later"}
# Fused training: trials may train together as one network when they differ only in these.
PER_MEMBER_FIELDS = fields_with_role("member", "label")
# For trial_id (issue 25: status hashes every spec.json): its fields in to_dict's order, and one encoder.
_ID_FIELDS = tuple(name for name in _FIELD_NAMES if name in IN_TRIAL_ID)
_TUPLE_SET = frozenset(_TUPLE_FIELDS)
_ID_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
# Every field's default, for TrialSpec._of_fields: plain values only (a default_factory would need calling).
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrialSpec)}
if dataclasses.MISSING in _DEFAULTS.values():
    raise TypeError("every TrialSpec field needs a plain default (TrialSpec._of_fields starts from them)")


# ---- strict typing ------------------------------------------------------------------------


def field_names() -> list[str]:
    return list(_FIELD_NAMES)


@functools.lru_cache(maxsize=1)
def _field_set() -> frozenset[str]:
    return frozenset(_FIELD_NAMES)


@functools.lru_cache(maxsize=1)
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrialSpec)


def type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"list of {type_name(args[0])}"
    return "null" if tp is type(None) else tp.__name__


def coerce(key: str, value: Any, where: str = "spec") -> Any:
    """Check `value` against the field's type; ints are accepted for floats, lists for tuples.

    Booleans are never numbers (YAML `yes` must not become alpha = 1).
    """
    if type(value) in _unchanged_types()[key]:  # the common case (a spec.json as written): nothing to convert
        return value
    tp = _field_types()[key]
    try:
        return coerce_type(tp, value)
    except TypeError:
        shown = _json_quote(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
        raise SpecError(f"{where}: field '{key}' must be {type_name(tp)}, got {shown}") from None


@functools.lru_cache(maxsize=1)
def _unchanged_types() -> dict[str, frozenset[type]]:
    """Per field, the exact value types that `coerce_type` returns unchanged (a fast path, issue 25).

    Scalar arms accept by type alone; a type an earlier arm takes and converts (an int in a float
    arm, a list in a tuple arm) is left to `coerce_type`, as is everything after an arm of another kind.
    """
    accepts: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,), type(None): (type(None),)}
    out = {}
    for key, tp in _field_types().items():
        arms = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        seen: set[type] = set()
        fast = set()
        for arm in arms:
            if typing.get_origin(arm) is tuple:  # takes lists and tuples, converting them: never unchanged
                seen |= {list, tuple}
                continue
            if arm not in accepts:
                break
            fast |= {t for t in accepts[arm] if t is arm and t not in seen}  # identity only where the arm keeps the type
            seen |= set(accepts[arm])
        out[key] = frozenset(fast)
    return out


def _json_quote(value: str | int | float | bool | None) -> str:
    """A scalar as JSON/YAML writes it ("1e-5" quoted, so text is seen as text), at most ~80 characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return quote(value)
    text = json.dumps(value[:100] if isinstance(value, str) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def coerce_type(tp: Any, value: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return coerce_type(arg, value)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return tuple(coerce_type(args[0], v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond any float
                raise TypeError from None
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError


def _check_values(s: TrialSpec) -> None:
    """Value checks beyond types; messages say what is allowed.

    Bounds are those of what the trainer does with a value: a seed feeds torch.manual_seed and
    numpy (and, times 1_000_003 plus the epoch, each epoch's generator), so it stays within 32
    bits; a batch larger than the training set would take no optimizer step at all; an onset at
    or after the last epoch would never regularize. Nonsense is refused here, before a launcher
    writes anything, rather than recorded as a finished trial.
    """
    for name, allowed in (
        ("model", MODEL_NAMES), ("dataset", DATASET_NAMES), ("lr_schedule", LR_SCHEDULES),
        ("si_pooling", SI_POOLINGS), ("si_class_stat", SI_CLASS_STATS), ("loader", LOADERS), ("input_norm", INPUT_NORMS),
        ("ablation_random_masks", ABLATION_RANDOM_MASKS),
    ):  # fmt: skip
        if getattr(s, name) not in allowed:
            raise SpecError(f"field '{name}' is {quote(getattr(s, name))}; allowed: {', '.join(allowed)}")
    for tracker in s.trackers:
        if tracker not in TRACKERS or s.trackers.count(tracker) > 1:
            twice = " twice" if tracker in TRACKERS else ""
            raise SpecError(f"field 'trackers' has {quote(tracker)}{twice}; allowed: {', '.join(TRACKERS)}")
    for name in ("alpha", "lr", "momentum", "weight_decay", "lr_gamma"):
        if not math.isfinite(getattr(s, name)):
            raise SpecError(f"field '{name}' is {getattr(s, name)}; allowed: a finite number")
    _in_range(s, "epochs", 1, MAX_EPOCHS)
    n_train = DATASETS[s.dataset].n_train
    _in_range(s, "batch_size", 2, n_train, f" (class means need two samples; {s.dataset} has {n_train} training images)")
    if not s.lr > 0:
        raise SpecError(f"field 'lr' is {s.lr}; allowed: a number > 0")
    if not 0 <= s.momentum < 1:
        raise SpecError(f"field 'momentum' is {s.momentum}; allowed: 0 <= momentum < 1")
    if s.weight_decay < 0:
        raise SpecError(f"field 'weight_decay' is {s.weight_decay}; allowed: >= 0")
    if not 0 < s.lr_gamma <= 1:
        raise SpecError(f"field 'lr_gamma' is {s.lr_gamma}; allowed: 0 < lr_gamma <= 1 (the lr is multiplied by it at each milestone)")
    _in_range(s, "seed", 0, MAX_SEED)
    _in_range(s, "onset_epoch", 0, s.epochs - 1, f" (0-based training epochs of a {s.epochs}-epoch trial)")
    if s.offset_epoch is not None and not s.onset_epoch < s.offset_epoch <= s.epochs:
        raise SpecError(
            f"field 'offset_epoch' is {s.offset_epoch}; allowed: null or {s.onset_epoch + 1} to {s.epochs} "
            f"(after onset_epoch {s.onset_epoch}, at most epochs)"
        )
    if s.lr_milestones is not None:
        ms = list(s.lr_milestones)
        if ms != sorted(set(ms)) or any(not 0 < m < s.epochs for m in ms):
            raise SpecError(
                f"field 'lr_milestones' is {quote(ms)}; allowed: strictly increasing epochs between 1 and {s.epochs - 1} "
                "(null: 50% and 75% of the epochs)"
            )
    if s.keep_checkpoints is not None and any(not 0 <= e <= s.epochs for e in s.keep_checkpoints):
        raise SpecError(f"field 'keep_checkpoints' is {quote(list(s.keep_checkpoints))}; allowed: epochs between 0 and {s.epochs}")
    steps = n_train // s.batch_size
    if s.eval_every_steps != 0 and steps < 2:  # no step inside an epoch to evaluate after: nothing would be evaluated
        raise SpecError(
            f"field 'eval_every_steps' is {s.eval_every_steps}; allowed: 0 (off): {s.dataset} at batch_size {s.batch_size} "
            f"has {steps} step(s) per epoch, so there is no point inside an epoch to evaluate at (a smaller batch_size has more)"
        )
    if s.eval_every_steps != 0:
        _in_range(
            s,
            "eval_every_steps",
            1,
            max(1, steps - 1),
            f" or 0 (off): {s.dataset} at batch_size {s.batch_size} has {steps} steps per epoch",
        )
    _in_range(s, "eval_until_epoch", 0, s.epochs)
    if (s.eval_every_steps == 0) != (s.eval_until_epoch == 0):
        raise SpecError(
            f"fields 'eval_every_steps' ({s.eval_every_steps}) and 'eval_until_epoch' ({s.eval_until_epoch}): "
            "allowed: both 0, or both set (evaluate every N steps during epochs 1..M)"
        )
    if s.ablation_fractions is not None and (not s.ablation_fractions or not all(0 <= f <= 1 for f in s.ablation_fractions)):
        raise SpecError(
            f"field 'ablation_fractions' is {quote(list(s.ablation_fractions))}; allowed: null, or a non-empty list of fractions in [0, 1]"
        )
    if s.ablation_counts is not None and (not s.ablation_counts or min(s.ablation_counts) < 0):
        raise SpecError(f"field 'ablation_counts' is {quote(list(s.ablation_counts))}; allowed: null, or a non-empty list of counts >= 0")
    if s.ablation_count_steps is not None and (len(s.ablation_count_steps) != 2 or min(s.ablation_count_steps) < 1):
        raise SpecError(
            f"field 'ablation_count_steps' is {quote(list(s.ablation_count_steps))}; allowed: null, or [a, b] with a, b >= 1 "
            "(k in range(0, C/2, a) and range(C/2, C+1, b))"
        )
    _in_range(s, "ablation_draws", 1, MAX_DRAWS)
    if s.ablation_images is not None:
        _in_range(s, "ablation_images", 10, DATASETS[s.dataset].n_test, f" or null (test images of {s.dataset})")
    _check_analysis(s)
    _check_skip_stages(s)
    _in_range(s, "num_workers", 0, MAX_WORKERS)
    if s.threads is not None:
        _in_range(s, "threads", 1, MAX_THREADS, " or null (1 on CPU)")
    if not DEVICE.fullmatch(s.device):
        raise SpecError(f"field 'device' is {quote(s.device)}; allowed: auto, cpu, cuda, cuda:N")
    if not s.sweep or any(c in s.sweep for c in "/\\") or s.sweep in (".", "..") or not s.sweep.isprintable():
        raise SpecError(f"field 'sweep' is {quote(s.sweep)}; allowed: a plain printable name without path separators")
    for name in ("data_root", "cache_dir"):
        value = getattr(s, name)
        if value is not None and (not value or "\0" in value or "\n" in value):
            raise SpecError(f"field '{name}' is {quote(value)}; allowed: null or a path (no empty text, NUL or newline)")


def _check_skip_stages(s: TrialSpec) -> None:
    """si_skip_stages names stages of the model and leaves at least one stage in SI_batch."""
    if s.si_skip_stages is None:
        return
    n = len(MODELS[s.model].stage_widths)
    skip = list(s.si_skip_stages)
    left = set(range(1, n + 1)) - set(skip) - ({n} if s.si_skip_last_stage else set())
    if not skip or skip != sorted(set(skip)) or any(not 1 <= i <= n for i in skip) or not left:
        raise SpecError(
            f"field 'si_skip_stages' is {quote(skip)}; allowed: null, or increasing stage numbers of {s.model} "
            f"(1 to {n}) that leave at least one stage in the regularizer"
        )


def _check_analysis(s: TrialSpec) -> None:
    """The model takes the data set's images; the representation job has checkpoints and images to read."""
    model, data = MODELS[s.model], DATASETS[s.dataset]
    if data.image_size < model.min_image_size:
        raise SpecError(
            f"field 'model' is {quote(s.model)}, which needs images of at least {model.min_image_size} px; "
            f"dataset {quote(s.dataset)} has {data.image_size} px images"
        )
    if s.represent_images is not None:
        _in_range(s, "represent_images", 10, data.n_test, f" or null (test images of {s.dataset})")
    _in_range(s, "cka_batch_size", 4, data.n_test, f" (the unbiased HSIC needs 4 images; {s.dataset} has {data.n_test} test images)")
    if s.robust_images is not None:
        _in_range(s, "robust_images", 10, data.n_test, f" or null (test images of {s.dataset})")
    if s.represent and not s.kept_epochs():
        raise SpecError("field 'represent' is true but keep_checkpoints is []; allowed: keep the epochs to analyse, or represent: false")


def _in_range(s: TrialSpec, name: str, low: int, high: int, why: str = "") -> None:
    value = getattr(s, name)
    if not low <= value <= high:
        raise SpecError(f"field '{name}' is {quote(value)}; allowed: {low} to {high}{why}")


def quote(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: an error message never echoes a huge value.

    reprlib stops early in long or deep containers, so a value built from a YAML alias bomb or a
    10 MB string costs no more to show than a short one.
    """
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int too long to print (sys.get_int_max_str_digits)
        text = f"<an int of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 70, 70, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8
