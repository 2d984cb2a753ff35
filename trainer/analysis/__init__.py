"""After-training science on a trial's kept checkpoints; each measure's math apart from its job's CLI.

    ablation.py           channel ablations (math)        ablation_job.py        python -m trainer.analysis.ablation_job
    representation.py     CKA, PWCCA, dimensionality      representation_job.py  python -m trainer.analysis.representation_job
                                                          similarity_job.py      python -m trainer.analysis.similarity_job
                                                          minibatch_cka_job.py   python -m trainer.analysis.minibatch_cka_job
    corruptions.py        15 corruptions x 5 severities   robustness_job.py      python -m trainer.analysis.robustness_job
    corruption_sets.py    CIFAR-10-C / Tiny-ImageNet-C
    attacks.py            FGSM, PGD
    plan_record.py        the settings a job's rows were measured with (resume only under them)

The orchestrator's launchers over a whole sweep are in orchestrator/analysis/.
"""
