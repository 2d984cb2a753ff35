"""A trial's checkpoints: the rolling resume checkpoint and the epochs kept for analysis.

    <trial>/checkpoint.pt              {"model", "optimizer", "epoch", "step"}: replaced after every epoch
    <trial>/checkpoints/epoch_NNN.pt   the same file, kept (a hard link, no copy) for trainer.analysis.ablation_job
    <trial>/checkpoint_mid.pt          a stop inside an epoch (a time limit ahead): the same plus
                                       "in_epoch" (steps done, the epoch's statistics so far, RNG
                                       state); valid only while its "epoch" equals checkpoint.pt's
    <trial>/checkpoint_mid.pt.damaged-<UTC time>   a mid-epoch checkpoint that could not be read
                                       (truncated, zero bytes), set aside: the trial resumes from
                                       checkpoint.pt instead, losing only part of one epoch

The layout is a plain single-model `state_dict` and SGD `state_dict` whether the trial trained
alone or fused with others (trainer.group slices its member's share out), so a trial resumes
alone or in any group.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer import faults
from trainer import results as R

KEPT = "checkpoints"
MID = "checkpoint_mid.pt"
KEYS = ("model", "optimizer", "epoch", "step")
MID_KEYS = (*KEYS, "in_epoch")


class CheckpointUnreadable(RuntimeError):
    """A checkpoint file that torch cannot load, or that lacks what a checkpoint holds."""


# Not started over silently: the trial's rows and kept checkpoints go with its checkpoint.
_REMEDY = "delete it to restart the trial from scratch, then run the sweep again (--retry-failed once its attempts are spent)"


def save_checkpoint(
    folder: Path, model_state: dict[str, Any], optimizer_state: dict[str, Any], epoch: int, step: int, keep: bool = False
) -> None:
    """Replace the rolling resume checkpoint; with `keep`, also keep this epoch's for analysis."""
    with R.temp_for(folder / R.CHECKPOINT) as tmp:
        _save({"model": model_state, "optimizer": optimizer_state, "epoch": epoch, "step": step}, tmp)
        faults.point("checkpoint-tmp")
        if keep:
            # A hard link to the same bytes: no copy; the next rolling checkpoint is a new file.
            kept = folder / KEPT
            kept.mkdir(exist_ok=True)
            with R.temp_for(kept / f"epoch_{epoch:03d}.pt") as link:
                link.unlink(missing_ok=True)
                os.link(tmp, link)
                R.replace_atomically(link, kept / f"epoch_{epoch:03d}.pt")
        R.replace_atomically(tmp, folder / R.CHECKPOINT)


def _save(checkpoint: dict[str, Any], tmp: Path) -> None:
    """torch.save into memory, then one write of ours. On a full disk torch's own writer said only
    "[enforce fail at inline_container.cc] unexpected pos", and its handle stayed open in the
    exception's frames (the removed temp file kept its blocks, so the status write failed too); our
    write raises OSError ENOSPC, and the file is closed before the temp file goes."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with open(tmp, "wb") as f:
        f.write(buffer.getbuffer())


def save_mid_checkpoint(
    folder: Path, model_state: dict[str, Any], optimizer_state: dict[str, Any], epoch: int, step: int, in_epoch: dict[str, Any]
) -> None:
    """Save a stop inside 0-based training epoch `epoch` (after `epoch` whole epochs), beside checkpoint.pt."""
    with R.temp_for(folder / MID) as tmp:
        _save({"model": model_state, "optimizer": optimizer_state, "epoch": epoch, "step": step, "in_epoch": in_epoch}, tmp)
        R.replace_atomically(tmp, folder / MID)


def load_mid_checkpoint(
    folder: Path, device: torch.device, epoch: int | None, on_damaged: Callable[[str], None] | None = None
) -> dict[str, Any] | None:
    """The mid-epoch checkpoint if it continues from `epoch` (checkpoint.pt's); a stale one is removed.

    A damaged one (truncated, zero bytes, not a checkpoint) is renamed aside, never deleted, and
    None comes back: the trial resumes from checkpoint.pt. `on_damaged` gets the one-line message
    (to record in status.json); it also goes to stderr.
    """
    path = folder / MID
    if not path.exists():
        return None
    try:
        ckpt = _load(path, device, MID_KEYS)
    except CheckpointUnreadable as err:
        aside = path.with_name(f"{MID}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        os.replace(path, aside)
        message = f"{err.args[0].split(';')[0]}; set aside as {aside.name}; the trial resumes from {R.CHECKPOINT} (epoch {epoch})"
        print(f"warning: {message}", file=sys.stderr, flush=True)
        if on_damaged is not None:
            on_damaged(message)
        return None
    if ckpt.get("epoch") != epoch:  # the epoch it was in finished since (or never started): stale
        path.unlink(missing_ok=True)
        return None
    return ckpt


def drop_mid_checkpoint(folder: Path) -> None:
    (folder / MID).unlink(missing_ok=True)


def load_checkpoint(folder: Path, device: torch.device) -> dict[str, Any] | None:
    """The last checkpoint, or None if the trial never finished an epoch.

    Loaded with weights_only=True: only tensors and plain containers, never arbitrary objects.
    An unreadable checkpoint is an error, not a reason to start over silently.
    """
    path = folder / R.CHECKPOINT
    if not path.exists():
        return None
    return _load(path, device, KEYS)


def _load(path: Path, device: torch.device, keys: tuple[str, ...]) -> dict[str, Any]:
    """The checkpoint at `path`, holding `keys`; CheckpointUnreadable naming the file and the remedy."""
    try:
        ckpt: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointUnreadable(f"checkpoint {path} is unreadable ({reason}); {_REMEDY}") from err
    if not isinstance(ckpt, dict):
        raise CheckpointUnreadable(f"checkpoint {path} is not a checkpoint ({type(ckpt).__name__}); {_REMEDY}")
    missing = [key for key in keys if key not in ckpt]
    if missing:
        raise CheckpointUnreadable(f"checkpoint {path} lacks {', '.join(missing)}; {_REMEDY}")
    return ckpt
