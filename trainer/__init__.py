"""Trainer: selectivity-regularized training runs (trials), written to Parquet.

Knows nothing of Ray, SLURM or the orchestrator; every backend runs `python -m trainer.group`, which calls `trainer.trial.run_group`
(K trials as one fused network, or each alone as `trainer.trial.run_trial`).
"""
