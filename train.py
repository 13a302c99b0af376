"""Train one model (or, with -m, a sweep of models): `python train.py activation=telu`."""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from actlab.data.fashion_mnist import CorruptDataError, DataNotFoundError
from actlab.errors import ConfigError
from actlab.training import run

# a user's mistake, not actlab's: one line on screen (the run's record keeps the traceback)
USER_ERRORS = (ConfigError, DataNotFoundError, CorruptDataError)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    try:
        record = run(
            cfg,
            output_dir=hydra_cfg.runtime.output_dir,
            activation=hydra_cfg.runtime.choices.get("activation"),
            overrides=list(hydra_cfg.overrides.task),
            parallel_jobs=hydra_cfg.launcher.get("n_jobs"),
        )
    except USER_ERRORS as error:
        if hydra_cfg.mode == RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # a sweep records it and goes on; HYDRA_FULL_ERROR=1 asks for the traceback
        record_path = os.path.join(hydra_cfg.runtime.output_dir, "metrics.json")
        sys.exit(f"error: {error}\n(traceback in {record_path}; HYDRA_FULL_ERROR=1 shows it here)")
    return record.get("val/acc_best")  # what a sweeper optimises: validation, never test


if __name__ == "__main__":
    main()
