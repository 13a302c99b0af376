"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher, saying in one line
what failed where SLURM does not take the jobs (instead of submitit's traceback)."""

from collections.abc import Sequence

from hydra.core.utils import JobReturn

from hydra_plugins.actlab_packed_launcher.packed_launcher import slurm_errors_explained

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the `cluster` extra is not installed: hydra/launcher=slurm is not available either
    SlurmLauncher = None

if SlurmLauncher is not None:

    class ActlabSlurmLauncher(SlurmLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            with slurm_errors_explained():
                return super().launch(job_overrides, initial_job_idx)
