"""Hyper-parameter search with current Optuna, driven directly over actlab's own runs.

Why not hydra-optuna-sweeper: its newest release pins optuna<3, which runs an SQLite study
only with SQLAlchemy<2 and alembic<1.14 (and pulls a hydra-core pre-release unless pinned).
A small loop over :func:`actlab.training.run` needs none of that, keeps every trial an
ordinary run (record, checkpoints, TensorBoard), and stores the study in SQLite so an
interrupted search resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per searched key: ``{low, high, log}`` ranges (float) or ``{choices}``."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        else:
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return values


def compose_run(overrides: list[str]) -> DictConfig:
    """conf/train.yaml composed with ``overrides`` as `python train.py` would (Hydra's compose
    API), its Hydra settings made current so that ``${hydra:...}`` values resolve."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from actlab.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_search(overrides: list[str]) -> dict[str, Any]:
    """Run (or resume) the study that ``overrides`` (with ``hparams_search=optuna``)
    describe; returns the best trial."""
    import optuna
    from hydra.core.hydra_config import HydraConfig

    from actlab.training import run

    cfg = compose_run([*overrides, "paths.output_dir=."])
    if not cfg.get("hparams_search"):
        raise ValueError("no search configured: add hparams_search=optuna")
    activation = HydraConfig.get().runtime.choices.get("activation")
    search = cfg.hparams_search
    directory = Path(search.dir).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{directory / 'study.db'}"
    study = optuna.create_study(study_name=search.study_name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=search.sampler_seed),
                                load_if_exists=True)  # fmt: skip
    for stale in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):  # a previous process was stopped
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
    done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    space = OmegaConf.to_container(search.space, resolve=True)
    fixed = [*overrides, *(search.get("overrides") or [])]

    def objective(trial: Any) -> float:
        values = [f"{key}={value}" for key, value in suggest(trial, space).items()]
        output_dir = directory / f"trial_{trial.number:03d}"
        record = run(compose_run([*fixed, *values, f"paths.output_dir={output_dir}"]), output_dir, activation,
                     values)  # fmt: skip
        trial.set_user_attr("output_dir", str(output_dir))
        score = record.get("val/acc_best")
        if record.get("status") != "completed" or score is None:
            raise optuna.TrialPruned(f"trial {trial.number}: {record.get('status')}")
        return float(score)

    remaining = max(0, int(search.n_trials) - done)
    log.info("search %s: %d trials done, %d to run, study in %s", search.study_name, done, remaining, storage)
    if remaining:
        study.optimize(objective, n_trials=remaining, catch=(Exception,))
    best = study.best_trial
    return {"study": search.study_name, "activation": activation, "value": best.value, "params": best.params,
            "trial": best.number, "output_dir": best.user_attrs.get("output_dir"),
            "trials": len(study.trials), "storage": storage}  # fmt: skip
