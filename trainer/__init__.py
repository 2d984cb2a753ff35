"""Trainer: selectivity-regularized training runs (trials), written to Parquet.

Knows nothing of Ray, SLURM or the orchestrator; every backend calls `trainer.group.run_group`
(K trials as one fused network, or each alone as `trainer.run.run_trial`).
"""
