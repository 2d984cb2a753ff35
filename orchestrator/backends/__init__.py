"""Engines that run trial folders: local processes, Ray Tune, SLURM (submitit); one file each."""
