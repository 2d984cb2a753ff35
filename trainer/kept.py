"""The kept checkpoints an after-training job reads (`<trial>/checkpoints/epoch_NNN.pt`), checked.

    missing = missing_kept(folder, spec)          # epochs the spec kept whose files are gone
    state = load_kept(folder, epoch, device)      # one UserError line naming a damaged file

A kept checkpoint cannot be made again without training the trial again, so a job never guesses:
a damaged one (truncated, zero bytes) stops the trial's job with one line that names the file and
what to do, and missing ones are named in a warning while the job goes on with the rest. Used by
trainer.analysis.ablation_job, trainer.analysis.representation_job and their orchestrator commands; imports torch only to load.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import UserError
from trainer.spec import TrialSpec

if TYPE_CHECKING:
    import torch

KEPT = "checkpoints"  # as trainer.checkpoint.KEPT (not imported: that module imports torch)


def kept_path(folder: Path, epoch: int) -> Path:
    return folder / KEPT / f"epoch_{epoch:03d}.pt"


def missing_kept(folder: Path, spec: TrialSpec, last_epoch: int | None = None) -> list[int]:
    """Epochs up to `last_epoch` (default: the spec's last) that the spec keeps but whose file is not there."""
    found = (re.fullmatch(r"epoch_(\d+)\.pt", p.name) for p in (folder / KEPT).glob("epoch_*.pt"))
    present = {int(m.group(1)) for m in found if m}
    last = spec.epochs if last_epoch is None else last_epoch
    return sorted(e for e in spec.kept_epochs() if e <= last and e not in present)


def missing_warning(folder: Path, missing: list[int]) -> str:
    names = ", ".join(kept_path(folder, e).name for e in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (
        f"warning: {folder}: {len(missing)} kept checkpoint(s) missing ({names} under {KEPT}/); those epochs are not analysed; "
        "to have them, delete the trial folder and run the sweep again (it trains the trial anew)"
    )


def load_kept(folder: Path, epoch: int, device: torch.device) -> dict[str, Any]:
    """The kept checkpoint of `epoch`; one line (UserError) naming the file if it cannot be read."""
    import torch

    path = kept_path(folder, epoch)
    try:
        state: Any = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError("no model weights in it")
    except Exception as err:  # noqa: BLE001  # torch raises EOFError, RuntimeError, UnpicklingError, ... for a damaged file
        text = str(err).strip().splitlines()[0][:120] if str(err).strip() else "empty or truncated"
        raise UserError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {text}); move it aside to analyse the other epochs "
            "without it, or delete the trial folder and run the sweep again to train it anew"
        ) from None
    return state
