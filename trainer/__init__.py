"""Trainer: one selectivity-regularized training run (a trial), written to Parquet.

Knows nothing of Ray, SLURM or the orchestrator; every backend calls `trainer.run.run_trial`.
"""
