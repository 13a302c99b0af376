"""Train one model (or, with -m, a sweep of models): `python train.py activation=telu`."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from actlab.training import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    record = run(
        cfg,
        output_dir=hydra_cfg.runtime.output_dir,
        activation=hydra_cfg.runtime.choices.get("activation"),
        overrides=list(hydra_cfg.overrides.task),
        parallel_jobs=hydra_cfg.launcher.get("n_jobs"),
    )
    return record.get("val/acc_best")  # what a sweeper optimises: validation, never test


if __name__ == "__main__":
    main()
