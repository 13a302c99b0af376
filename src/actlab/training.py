"""One training run, from a composed config to its record. Importable without Hydra's CLI."""

from __future__ import annotations

import logging
import os
import signal
import statistics
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from actlab.callbacks import DivergedError, DivergenceMonitor, InterruptionCheckpoint, RunHistory
from actlab.callbacks.diagnostic import Diagnostic
from actlab.classifier import Classifier
from actlab.hparams import run_hparams, write_hparams
from actlab.record import read_record, write_record

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
HPARAM_METRICS = ("test/acc", "test/loss", "val/acc", "dead/overall", "near_dead/overall")


class ConfigError(ValueError):
    """A config value that cannot work, caught before any training starts."""


def validate_config(cfg: DictConfig) -> None:
    """Reject values that would only fail (or silently mislead) later in the run."""
    lr = cfg.optimizer.get("lr")
    if lr is None or not float(lr) > 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {lr}")
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1 (or -1 for no limit), got {max_epochs}")


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a name -> config mapping (callbacks, loggers); None entries are off."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def default_threads(parallel_jobs: int | None) -> int | None:
    """torch threads for a run that shares its machine: the CPUs SLURM gave the task, or an
    equal share of the cores among ``parallel_jobs`` local runs; None = torch's default.
    (Oversubscribed OpenMP threads spin against each other and slow every run down.)"""
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm_cpus and slurm_cpus.isdigit():
        return int(slurm_cpus)
    if parallel_jobs:
        return max(1, (os.cpu_count() or 1) // parallel_jobs)
    return None


def _build(cfg: DictConfig, **kwargs: Any) -> Any:
    """``instantiate`` that lets a constructor's own ValueError (our clear messages) through,
    instead of Hydra's InstantiationException wrapper around it."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


def build_run(cfg: DictConfig) -> tuple[L.LightningDataModule, Classifier]:
    """Data and model from the config (no trainer): the part tests and benchmarks share."""
    validate_config(cfg)
    datamodule = _build(cfg.data)
    activation = _build(cfg.activation)
    net = _build(cfg.model, activation=activation)
    module = Classifier(
        net=net,
        optimizer=_build(cfg.optimizer),
        num_classes=datamodule.num_classes,
        compile=cfg.get("compile", False),
    )
    return datamodule, module


def run(
    cfg: DictConfig,
    output_dir: str | Path,
    activation: str | None = None,
    overrides: list[str] | None = None,
    parallel_jobs: int | None = None,
) -> dict[str, Any]:
    """Train, test and record one run described by ``cfg`` into ``output_dir``.

    ``parallel_jobs`` is how many runs share this machine (local_parallel's n_jobs); with
    ``threads: null`` each then gets its share of the cores (see ``default_threads``).
    Returns the run record (also written to ``output_dir/metrics.json``). A diverging loss
    is recorded as ``diverged`` and returns normally; errors are recorded as ``failed`` and
    re-raised; Ctrl-C/SIGTERM is recorded as ``interrupted`` (after a checkpoint) and exits.
    """
    output_dir = Path(output_dir)
    previous = read_record(output_dir)
    if cfg.get("resume") and previous and previous.get("status") == "completed":
        log.info("resume: %s already completed, skipping", output_dir)
        return previous
    last_ckpt = output_dir / CHECKPOINT_DIR / "last.ckpt"
    resume_from = str(last_ckpt) if cfg.get("resume") and last_ckpt.is_file() else None

    record: dict[str, Any] = {
        "status": "running",
        "activation": activation,
        "overrides": list(overrides or []),
        "seed": cfg.get("seed"),
        "output_dir": str(output_dir),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "resumed_from": resume_from,
    }
    write_record(output_dir, record)
    history = RunHistory()
    interruption = InterruptionCheckpoint(output_dir / CHECKPOINT_DIR)
    trainer = None
    fit_start = time.perf_counter()
    try:
        torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
        threads = cfg.get("threads") or default_threads(parallel_jobs)
        if threads:
            torch.set_num_threads(threads)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, module = build_run(cfg)
        record.update(
            depth=module.net.depth,
            hidden_shape=module.net.hidden_shape,
            num_parameters=sum(p.numel() for p in module.parameters()),
        )
        # divergence first (stop before diagnostics see NaNs); history last (it times the rest)
        callbacks = [DivergenceMonitor(), *_instantiate_group(cfg.get("callbacks")), interruption, history]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=_instantiate_group(cfg.get("logger")))
        record["accelerator"] = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
        fit_start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        record["fit_time_s"] = time.perf_counter() - fit_start
        record["resumed_from"] = trainer.ckpt_path  # ours, or Lightning's own SLURM requeue checkpoint
        # A finished fit has spent its SLURM requeue checkpoints; left in place, Lightning would
        # load them into the model for trainer.test() (any ckpt_path=None under SLURM means "hpc").
        for spent in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
            spent.unlink()
        if cfg.get("test_after_fit", True):
            (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
            record.update({k: v for k, v in results.items() if k.startswith("test/")})
        record["status"] = "completed"
        write_hparams(trainer.loggers, run_hparams(cfg, activation), HPARAM_METRICS)
    except DivergedError as err:
        log.warning("run diverged: %s", err)
        record.update(status="diverged", error=str(err))
    except BaseException as err:
        if interruption.interrupted or isinstance(err, KeyboardInterrupt):
            record.update(status="interrupted", error=f"{type(err).__name__}: {err}")
            if isinstance(err, SIGTERMException):  # a bare SystemExit would exit with status 0
                raise SystemExit(128 + signal.SIGTERM) from err
            raise
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        record.setdefault("fit_time_s", time.perf_counter() - fit_start)
        _finalise_record(record, trainer, history)
        write_record(output_dir, record)
    return record


def _finalise_record(record: dict[str, Any], trainer: L.Trainer | None, history: RunHistory) -> None:
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["epoch_times_s"] = history.epoch_times
    record["epoch_time_s"] = statistics.median(history.epoch_times) if history.epoch_times else None
    record["history"] = dict(history.history)
    record["epochs_completed"] = trainer.fit_loop.epoch_progress.current.completed if trainer else 0
    val_acc = history.history.get("val/acc", [])
    record["val/acc_last"] = val_acc[-1] if val_acc else None
    record["val/acc_best"] = max(val_acc) if val_acc else None
    if trainer is not None:
        for callback in trainer.callbacks:
            if hasattr(callback, "record_metrics"):
                record.update(callback.record_metrics())
        diagnostics = [c for c in trainer.callbacks if isinstance(c, Diagnostic)]
        if diagnostics:  # seconds of each epoch_times_s entry spent in them (None: not timed here)
            timed = [
                [c.epoch_seconds[e] for c in diagnostics if e in c.epoch_seconds]
                for e in range(len(history.epoch_times))
            ]
            record["diagnostics_epoch_s"] = [sum(seconds) if seconds else None for seconds in timed]
