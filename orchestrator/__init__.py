"""Orchestrator: grids -> trials -> a backend (local, Ray Tune, SLURM) -> trial folders -> summaries.

Commands: `python -m orchestrator.sweep`, `python -m orchestrator.status`, `python -m orchestrator.collect`.
"""
