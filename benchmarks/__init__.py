"""Benchmarks run from the repository root as `python -m benchmarks.<name>`.

Not installed (pyproject.toml packages only trainer and orchestrator); measured figures and
targets are in docs/benchmarks.md. Each prints its own table; `--help` lists its options.

    backends         what a backend (local, ray) costs per trial over the bare trainer
    collect          the collector on a synthetic sweep (1,000 trials x 160 epochs): cold, unchanged, +10
    imagenet_loader  ImageNet input, old vs new, per CPU core, on generated ImageNet-like JPEGs
    plan             loading and planning a grid of 10,000 trials, scanning 1,000 finished ones
    speed            training speed: a plain DataLoader loop vs the fast single trial vs K fused trials
    step             one training step at alpha = 0 vs alpha (the regularizer's cost), the evaluation's share

and one module that is not a benchmark:

    synthetic        synthetic done trial folders in the trainer's layout (used by collect and the tests)
"""
