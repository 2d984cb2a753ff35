"""Kept only while imports move to trainer.cli / trainer.errors (the one exit-code table and wrapper)."""

from __future__ import annotations

from trainer.cli import cli
from trainer.errors import UserError

__all__ = ["UserError", "cli"]
