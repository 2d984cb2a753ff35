"""After-training analyses of finished trials (ablation, representation, robustness)."""
