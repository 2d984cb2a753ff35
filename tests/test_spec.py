"""TrialSpec: strict construction, the trial id, the alpha and lr schedules, the registries."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from trainer import registry
from trainer.loop import lr_at
from trainer.spec import ROW_ID_FIELDS, SpecError, TrialSpec, field_names

# The id of the default spec. If this changes, every existing results folder is orphaned:
# change it only on purpose, together with a note on migrating old sweeps.
DEFAULT_TRIAL_ID = "891716cca88d"


def spec_error(data: dict, where: str = "grid.yaml") -> str:
    with pytest.raises(SpecError) as info:
        TrialSpec.from_dict(data, where=where)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(where)
    return msg


# ---- from_dict strictness ---------------------------------------------------------------------
def test_unknown_field_lists_allowed() -> None:
    msg = spec_error({"alfa": -1.0})
    assert "'alfa'" in msg
    for name in field_names():
        assert name in msg


@pytest.mark.parametrize(
    "key,value",
    [
        ("epochs", "10"),
        ("epochs", 1.5),
        ("model", 20),
        ("alpha", None),
        ("alpha", [1.0]),
        ("augment", 1),
        ("augment", "yes"),
        ("lr_milestones", 5),
        ("lr_milestones", [5.0]),
        ("offset_epoch", 2.0),
    ],
)
def test_wrong_types_rejected(key: str, value: object) -> None:
    msg = spec_error({key: value})
    assert f"'{key}'" in msg and "must be" in msg


@pytest.mark.parametrize("key", ["alpha", "lr", "epochs", "seed"])
def test_bool_is_not_a_number(key: str) -> None:
    spec_error({key: True})


def test_int_accepted_as_float() -> None:
    spec = TrialSpec.from_dict({"alpha": -2, "lr": 1})
    assert spec.alpha == -2.0 and isinstance(spec.alpha, float)
    assert isinstance(spec.lr, float)
    assert spec.trial_id == TrialSpec(alpha=-2.0, lr=1.0).trial_id


def test_float_string_rejected() -> None:
    msg = spec_error({"weight_decay": "1e-5"})
    assert "'weight_decay'" in msg and '"1e-5"' in msg and "float" in msg


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("model", "resnet101", registry.MODEL_NAMES),
        ("dataset", "mnist", registry.DATASET_NAMES),
        ("lr_schedule", "linear", ("step", "cosine")),
        ("device", "tpu", ("auto", "cpu", "cuda")),
    ],
)
def test_unknown_names_list_allowed(key: str, value: str, allowed: tuple[str, ...]) -> None:
    msg = spec_error({key: value})
    assert value in msg
    for name in allowed:
        assert name in msg


@pytest.mark.parametrize("onset,offset", [(5, 5), (5, 3), (0, 0)])
def test_offset_must_follow_onset(onset: int, offset: int) -> None:
    msg = spec_error({"onset_epoch": onset, "offset_epoch": offset})
    assert "offset_epoch" in msg


@pytest.mark.parametrize(
    "data",
    [
        {"epochs": 0},
        {"lr": 0},
        {"batch_size": 1},
        {"seed": -1},
        {"onset_epoch": -1},
        {"alpha": float("nan")},
        {"alpha": float("inf")},
        {"lr_milestones": [5, 5]},
        {"lr_milestones": [7, 5]},
        {"sweep": "a/b"},
        {"sweep": ""},
    ],
)
def test_bad_values_rejected(data: dict) -> None:
    spec_error(data)


def test_not_a_mapping() -> None:
    spec_error([1, 2])  # type: ignore[arg-type]


def test_roundtrip_and_lists() -> None:
    spec = TrialSpec.from_dict({"lr_milestones": [3, 6], "offset_epoch": 8, "alpha": -20})
    assert spec.lr_milestones == (3, 6)
    assert TrialSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["lr_milestones"] == [3, 6]


# ---- trial id -----------------------------------------------------------------------------------
def test_trial_id_golden() -> None:
    assert TrialSpec().trial_id == DEFAULT_TRIAL_ID
    assert TrialSpec.from_dict({}).trial_id == DEFAULT_TRIAL_ID


def test_trial_id_ignores_resources_and_labels() -> None:
    other = TrialSpec(device="cpu", num_workers=7, data_root="/elsewhere", sweep="my-sweep")
    assert other.trial_id == DEFAULT_TRIAL_ID


SCIENCE_CHANGES = [
    {"alpha": -1.0},
    {"alpha": 1e-9},
    {"seed": 1},
    {"model": "resnet18"},
    {"dataset": "cifar10"},
    {"epochs": 11},
    {"batch_size": 64},
    {"lr": 0.05},
    {"momentum": 0.0},
    {"weight_decay": 0.0},
    {"lr_schedule": "cosine"},
    {"lr_milestones": (5, 7)},  # equal to the default milestones, but spelled out
    {"lr_gamma": 0.2},
    {"augment": False},
    {"eval_every_steps": 5, "eval_until_epoch": 2},  # fields added later: in the id once set
    {"si_pooling": "stages"},
    {"si_skip_last_stage": True},
    {"si_skip_stages": (3,)},
    {"si_class_stat": "sum"},
    {"input_norm": "half"},
]
WINDOW_CHANGES = [{"onset_epoch": 5}, {"offset_epoch": 3}, {"onset_epoch": 5, "offset_epoch": 9}]


@pytest.mark.parametrize("change", SCIENCE_CHANGES)
def test_trial_id_changes_with_science(change: dict) -> None:
    assert TrialSpec(**change).trial_id != DEFAULT_TRIAL_ID


@pytest.mark.parametrize("change", WINDOW_CHANGES)
def test_trial_id_changes_with_regularizer_window(change: dict) -> None:
    base = TrialSpec(alpha=-20.0)
    assert TrialSpec(alpha=-20.0, **change).trial_id != base.trial_id


def test_alpha_zero_is_one_trial_whatever_the_window() -> None:
    """alpha = 0 trains the same for any onset: the unregularized arm of an onset grid is one trial."""
    for spec in (TrialSpec(onset_epoch=5), TrialSpec(onset_epoch=2, offset_epoch=4), TrialSpec(alpha=-0.0)):
        assert spec.trial_id == DEFAULT_TRIAL_ID
        assert (spec.onset_epoch, spec.offset_epoch) == (0, None)


def test_every_science_field_is_checked_above() -> None:
    """A new TrialSpec field must be classified: a resource/label, or covered by the id tests above."""
    from trainer.spec import LABEL_FIELDS, RESOURCE_FIELDS

    covered = {k for change in SCIENCE_CHANGES + WINDOW_CHANGES for k in change}
    assert covered == set(field_names()) - RESOURCE_FIELDS - LABEL_FIELDS


def test_row_fields_start_with_identity() -> None:
    spec = TrialSpec(alpha=-5.0, sweep="s")
    fields = spec.row_fields()
    assert tuple(fields)[: len(ROW_ID_FIELDS)] == ROW_ID_FIELDS
    assert fields["trial_id"] == spec.trial_id and fields["alpha"] == -5.0 and fields["sweep"] == "s"
    assert fields["base_lr"] == spec.lr and "lr" not in fields
    assert not {"device", "num_workers", "data_root"} & set(fields)


# ---- schedules ----------------------------------------------------------------------------------
def test_alpha_schedule_onset_only() -> None:
    spec = TrialSpec(alpha=-20.0, onset_epoch=5, epochs=30)
    assert [spec.alpha_at(e) for e in (0, 4, 5, 6, 29, 100)] == [0.0, 0.0, -20.0, -20.0, -20.0, -20.0]


def test_alpha_schedule_onset_offset() -> None:
    spec = TrialSpec(alpha=3.0, onset_epoch=2, offset_epoch=4)
    assert [spec.alpha_at(e) for e in range(6)] == [0.0, 0.0, 3.0, 3.0, 0.0, 0.0]
    assert TrialSpec(alpha=3.0).alpha_at(0) == 3.0


def test_lr_step_default_milestones() -> None:
    spec = TrialSpec(epochs=160, lr=0.1)  # milestones at 50% and 75%: 80 and 120
    assert spec.milestones() == (80, 120)
    assert lr_at(spec, 0) == pytest.approx(0.1)
    assert lr_at(spec, 79) == pytest.approx(0.1)
    assert lr_at(spec, 80) == pytest.approx(0.01)
    assert lr_at(spec, 119) == pytest.approx(0.01)
    assert lr_at(spec, 120) == pytest.approx(0.001)
    assert lr_at(spec, 159) == pytest.approx(0.001)


def test_lr_step_custom() -> None:
    spec = TrialSpec(epochs=10, lr=0.4, lr_milestones=(2, 3, 9), lr_gamma=0.5)
    assert [lr_at(spec, e) for e in range(10)] == pytest.approx([0.4, 0.4, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05])


def test_lr_cosine() -> None:
    spec = TrialSpec(epochs=10, lr=0.2, lr_schedule="cosine")
    lrs = [lr_at(spec, e) for e in range(10)]
    assert lrs[0] == pytest.approx(0.2)
    assert lr_at(spec, 5) == pytest.approx(0.1)  # half way: half the rate
    assert lrs[9] == pytest.approx(0.1 * (1 + math.cos(0.9 * math.pi)))
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0


# ---- registries -------------------------------------------------------------------------------
def test_registry_names_match_builders() -> None:
    from trainer.data import DATASETS
    from trainer.models import MODELS

    assert list(registry.MODEL_NAMES) == list(MODELS)
    assert list(registry.DATASET_NAMES) == list(DATASETS)


def test_spec_does_not_import_torch() -> None:
    """Planning thousands of trials must not load torch (registry.py exists for this)."""
    code = "import sys; from trainer.spec import TrialSpec; TrialSpec.from_dict({'alpha': -1}).trial_id; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_later_fields_at_their_default_keep_old_trial_ids() -> None:
    # eval_every_steps / eval_until_epoch came after the first release: trials that do not set
    # them keep the ids they had (DEFAULT_TRIAL_ID is the golden id of the default spec).
    assert TrialSpec(eval_every_steps=0, eval_until_epoch=0).trial_id == DEFAULT_TRIAL_ID
    assert TrialSpec(si_pooling="layers", si_skip_last_stage=False, si_class_stat="mean").trial_id == DEFAULT_TRIAL_ID
    assert TrialSpec(si_skip_stages=None, threads=3).trial_id == DEFAULT_TRIAL_ID
    assert TrialSpec(keep_checkpoints=(1, 2)).trial_id == DEFAULT_TRIAL_ID  # analysis setting
    assert TrialSpec(input_norm="dataset", represent=True, represent_images=100).trial_id == DEFAULT_TRIAL_ID


def test_kept_epochs_default_follows_the_paper() -> None:
    kept = TrialSpec(epochs=90).kept_epochs()
    assert kept == frozenset(range(16)) | {20, 30, 40, 50, 60, 70, 80, 90}
    assert TrialSpec(epochs=3).kept_epochs() == {0, 1, 2, 3}
    assert TrialSpec(keep_checkpoints=()).kept_epochs() == frozenset()


def test_mid_epoch_evaluation_steps() -> None:
    spec = TrialSpec(eval_every_steps=4, eval_until_epoch=2)
    assert spec.eval_steps_in(0, 11) == [4, 8]
    assert spec.eval_steps_in(1, 8) == [4]  # never at the epoch's end: that row exists anyway
    assert spec.eval_steps_in(2, 11) == []
    assert TrialSpec().eval_steps_in(0, 11) == []


def test_coerce_fast_path_agrees_with_the_full_check():
    """coerce's shortcut (value types kept unchanged, issue 25) returns what coerce_type returns, or fails as it does."""
    from trainer.spec import _field_types, coerce, coerce_type

    for key, tp in _field_types().items():
        for value in (True, 0, 1, 10**400, 1.5, float("nan"), "x", None, [1], (1,), ["a"], {}):
            try:
                expected: object = coerce_type(tp, value)
            except TypeError:
                expected = TypeError
            try:
                got: object = coerce(key, value)
            except SpecError:
                got = TypeError
            assert got == expected or (got != got and expected != expected), (key, value)
            assert type(got) is type(expected), (key, value)


def test_from_dict_and_trial_id_agree_with_their_plain_forms() -> None:
    """from_dict fills a spec without calling __init__, and trial_id uses precomputed fields and one
    encoder (issue 25: status reads 10,000 specs); both must give what the plain forms give."""
    import hashlib
    import json

    from trainer.spec import IN_TRIAL_ID, LATER_DEFAULTS, coerce

    def plain_id(spec: TrialSpec) -> str:  # trial_id as first written
        d = spec.to_dict()
        science = {k: v for k, v in d.items() if k in IN_TRIAL_ID and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
        return hashlib.sha256(json.dumps(science, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]

    cases: list[dict[str, object]] = [
        {},
        {"alpha": -2, "lr": 1},
        {"alpha": 0, "onset_epoch": 3, "offset_epoch": 5, "epochs": 10},  # canonical form: onset dropped
        {"alpha": -0.0, "sweep": "s", "device": "cpu"},
        {"lr_milestones": [3, 6], "trackers": ["wandb"], "keep_checkpoints": [], "seed": 7, "threads": 2},
        {"si_skip_stages": [1], "si_pooling": "stages", "si_class_stat": "sum", "input_norm": "half", "alpha": -1.5},
        TrialSpec(alpha=-5.0, eval_every_steps=2, eval_until_epoch=1, ablation_fractions=(0.5,)).to_dict(),
    ]
    for data in cases:
        built = TrialSpec.from_dict(data)
        made = TrialSpec(**{k: coerce(k, v) for k, v in data.items()})
        assert list(vars(built).items()) == list(vars(made).items()) and built == made, data  # same fields, same order
        assert built.trial_id == made.trial_id == plain_id(made), data
    for bad in ({"epochs": 0}, {"alpha": 0.0, "model": "nope"}, {"onset_epoch": 20, "epochs": 10}):
        with pytest.raises(SpecError) as via_dict:
            TrialSpec.from_dict(bad, where="w")
        with pytest.raises(SpecError) as direct:
            TrialSpec(**bad)
        assert str(via_dict.value) == f"w: {direct.value}"
