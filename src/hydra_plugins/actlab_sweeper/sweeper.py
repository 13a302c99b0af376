"""``hydra/sweeper=actlab`` (the default): Hydra's basic sweeper, with a directory of its own for
every job and one line per failed job.

- A key left out of job directory names (``hydra.job.config.override_dirname.exclude_keys``:
  where or how a job runs, such as ``trainer`` or ``debug``) is put back into them when the
  sweep varies it, so ``trainer=gpu,cpu`` gives two directories, not one written twice.
- Before any job runs, every job's config is composed (as Hydra's basic sweeper validates a
  batch) and its directory worked out; two jobs with one directory (``seed=1,1``, or keys a
  custom ``hydra.sweep.subdir`` leaves out) stop the sweep, naming both. That holds for every
  launcher, since the launcher only runs what the sweeper hands it.
- A failed job does not end the sweep; at its end, the sweep exits 1 with one line per job
  that did not complete (its record keeps the traceback), instead of Hydra's traceback of the
  first failure.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict, read_write

from actlab.errors import RunDirectoryError, RunNotCompleted
from hydra_plugins.actlab_packed_launcher.packed_launcher import PackedLauncher

log = logging.getLogger(__name__)
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"


@dataclass
class ActlabSweeperConf:
    _target_: str = "hydra_plugins.actlab_sweeper.sweeper.ActlabSweeper"
    # jobs handed to the launcher at once (None: all of them)
    max_batch_size: int | None = None
    # sweep parameters an experiment config sets (`hydra.sweeper.params`), as for the basic sweeper
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="actlab", node=ActlabSweeperConf, provider="actlab")


def varying_keys(jobs: Sequence[Sequence[str]], parser: "OverridesParser") -> set[str]:
    """The override keys (``trainer``, ``optimizer.lr``, ...) whose value is not the same in
    every job of the sweep (a key some jobs lack varies too)."""
    values: dict[str, set[str | None]] = {}
    parsed = [{o.key_or_group: o.get_value_element_as_str() for o in parser.parse_overrides(list(job))} for job in jobs]
    for key in {key for job in parsed for key in job}:
        values[key] = {job.get(key) for job in parsed}
    return {key for key, seen in values.items() if len(seen) > 1}


def failure_line(job: JobReturn) -> str:
    """One line saying which job did not complete and why."""
    # JobReturn.return_value re-raises a failed job's exception after printing to stderr: read the
    # exception itself (the only private field of Hydra's that actlab reads)
    error = job._return_value
    message = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, RunNotCompleted):  # a launcher's report of the job's record
        what = message
    elif isinstance(error, RunDirectoryError):
        what = f"not started: {message}"
    else:
        what = f"failed: {type(error).__name__}: {message}"
    directory = OmegaConf.select(job.hydra_cfg, "hydra.runtime.output_dir") if job.hydra_cfg else None
    name = Path(directory).name if directory else " ".join(job.overrides or [])
    return f"  {name}: {what}"


class ActlabSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]),
                                              self.max_batch_size)  # fmt: skip
        jobs = [job for batch in self.overrides for job in batch]
        self._name_what_varies(jobs, parser)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self._check_distinct_directories(jobs)
        returns, failed, initial_job_idx = [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            failed += [job for job in results if job.status != JobStatus.COMPLETED]
            initial_job_idx += len(batch)
            returns.append(results)
        if failed:
            raise SystemExit(
                f"error: {len(failed)} of {len(jobs)} runs did not complete (their records in {sweep_dir} keep "
                "the tracebacks; fix the cause and add resume=true to rerun just these):\n"
                + "\n".join(failure_line(job) for job in failed)
            )
        return returns

    def _name_what_varies(self, jobs: list[list[str]], parser: OverridesParser) -> None:
        """Put the excluded keys the sweep varies back into the jobs' directory names (a
        Hydra override of the sweep, so every launcher composes its jobs with it)."""
        excluded = list(OmegaConf.select(self.config, EXCLUDE_KEYS) or [])
        varied = sorted(set(excluded) & varying_keys(jobs, parser))
        if not varied:
            return
        log.info("sweep: %s varies between jobs, so it names their directories", ", ".join(varied))
        kept = ",".join(f"'{key}'" for key in excluded if key not in varied)
        with read_write(self.config.hydra.overrides), open_dict(self.config.hydra.overrides):
            self.config.hydra.overrides.hydra.append(f"{EXCLUDE_KEYS}=[{kept}]")
        with read_write(self.config), open_dict(self.config):
            OmegaConf.update(self.config, EXCLUDE_KEYS, [key for key in excluded if key not in varied])

    def _check_distinct_directories(self, jobs: list[list[str]]) -> None:
        """Compose every job (which also checks that it composes, as Hydra's basic sweeper
        does per batch) and stop the sweep before anything runs if two share a directory, or
        one would start in another run's (:func:`actlab.record.check_run_directory`)."""
        from actlab.record import check_run_directory

        start = time.perf_counter()
        owners: dict[str, int] = {}
        composed = {}
        for idx, overrides in enumerate(jobs):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            composed[tuple(overrides)] = config
            with open_dict(config):
                config.hydra.job.id, config.hydra.job.num = f"{config.hydra.job.name}_{idx}", idx
            directory = str(Path(str(config.hydra.sweep.dir)) / str(OmegaConf.select(config, "hydra.sweep.subdir")))
            if directory in owners:
                first = owners[directory]
                raise SystemExit(
                    f"error: jobs #{first} ({' '.join(jobs[first])}) and #{idx} ({' '.join(overrides)}) would write "
                    f"to one directory, {directory}: make them differ in what names it (hydra.sweep.subdir, "
                    f"{EXCLUDE_KEYS}), or drop the repeated job"
                )
            owners[directory] = idx
            try:  # nothing runs if a job would start in another run's directory
                check_run_directory(directory, bool(config.get("resume")))
            except RunDirectoryError as error:
                raise SystemExit(f"error: job #{idx} ({' '.join(overrides)}): {error}") from None
        log.debug("sweep: composed %d jobs in %.2f s", len(jobs), time.perf_counter() - start)
        if isinstance(self.launcher, PackedLauncher):  # it lays out every job at once: composed once, not twice
            self.launcher.composed = composed
