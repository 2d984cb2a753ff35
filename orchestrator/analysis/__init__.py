"""Launchers of the after-training jobs over a finished sweep (trainer/analysis/ does the work).

python -m orchestrator.ablate results/<sweep>      channel ablations of the kept checkpoints
python -m orchestrator.represent results/<sweep>   CKA, PWCCA and dimensionality between trials
"""
