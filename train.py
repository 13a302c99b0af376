"""Train one model (or, with -m, a sweep of models): `python train.py activation=telu`."""

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from actlab.errors import RunDirectoryError, UserError

log = logging.getLogger("actlab.train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from actlab.training import run  # torch and Lightning: not for `--help` or `--cfg job`

    hydra_cfg = HydraConfig.get()
    try:
        record = run(
            cfg,
            output_dir=hydra_cfg.runtime.output_dir,
            activation=hydra_cfg.runtime.choices.get("activation"),
            overrides=list(hydra_cfg.overrides.task),
            parallel_jobs=hydra_cfg.launcher.get("n_jobs"),
        )
    except UserError as error:  # a user's mistake, not actlab's: one line on screen, the traceback in the record
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        line = f"error: {error}"
        if not isinstance(error, RunDirectoryError):  # that directory's record is another run's
            from actlab.record import read_record  # (imported with Lightning by now)

            # an error before the record was opened (a resume refused) leaves the earlier record as it was
            recorded = (read_record(hydra_cfg.runtime.output_dir) or {}).get("traceback")
            record_path = os.path.join(hydra_cfg.runtime.output_dir, "metrics.json")
            line += f" (traceback in {record_path}; HYDRA_FULL_ERROR=1 shows it here)" if recorded else \
                " (HYDRA_FULL_ERROR=1 shows the traceback)"  # fmt: skip
        if hydra_cfg.mode == RunMode.MULTIRUN:
            log.error(line)
            raise  # the sweep goes on, and names every failed job at its end
        sys.exit(line)
    return record.get("val/acc_best")  # what a sweeper optimises: validation, never test


def check_command_line(args: list[str]) -> None:
    """Hydra runs one of its modes per command; asked for two (``-m ... --cfg job``), say so in
    one line instead of Hydra's traceback."""
    multirun = any(a in ("-m", "--multirun") for a in args)
    shows = [a for a in args if a in ("-c", "--cfg", "-i", "--info", "-r", "--run")]
    if multirun and shows:
        sys.exit(f"error: {shows[0]} and -m/--multirun do not go together: {shows[0]} looks at one run "
                 "(drop -m and give one value per key to see that run's config)")  # fmt: skip


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
