"""One training run, from a composed config to its record. Importable without Hydra's CLI.

:func:`run` is a list of steps: resume or start the record, set up the process, build data
and model, build the trainer, fit, test, write the HPARAMS row, say how it went.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar, Timer
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from actlab.callbacks import DivergenceMonitor, RunHistory
from actlab.callbacks.requeue import RequeueGuard
from actlab.classifier import EPOCH_METRICS, Classifier
from actlab.console import is_terminal, quiet_third_party_noise, summary_line
from actlab.data.resumable import fresh_shuffle_warning
from actlab.errors import ConfigError, UserError
from actlab.models.simple_network import build_activation
from actlab.record import RESULTS, RunRecord, check_run_directory, read_record
from actlab.tensorboard import run_hparams, write_hparams

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
HPARAM_METRICS = ("test/acc", "test/loss", "val/acc_best", "dead/overall", "near_dead/overall")


def validate_config(cfg: DictConfig) -> None:
    """Reject values that would only fail (or silently mislead) later in the run."""
    seed_of(cfg)
    lr = cfg.optimizer.get("lr")
    if lr is None or not float(lr) > 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {lr}")
    if cfg.get("test_ckpt", "last") not in ("last", "best"):
        raise ConfigError(f"test_ckpt must be last or best, got {cfg.get('test_ckpt')!r}")
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1 (or -1 for no limit), got {max_epochs}")
    steps = cfg.get("train_steps_per_call", 1)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"train_steps_per_call must be an integer >= 1 (1: one optimiser step per Lightning "
                          f"call), got {steps!r}")  # fmt: skip
    check_accelerator(cfg.trainer.get("accelerator", "auto"))
    check_monitors(cfg.get("callbacks"))


def check_monitors(callbacks: DictConfig | None) -> None:
    """Every callback's ``monitor`` (early stopping, a checkpoint) names a metric the run logs
    every epoch: a typo would otherwise fail after an epoch of training, or in a pack never stop."""
    for name, entry in (callbacks or {}).items():
        monitor = entry.get("monitor") if isinstance(entry, DictConfig) and "_target_" in entry else None
        if monitor is not None and monitor not in EPOCH_METRICS:
            raise ConfigError(f"callbacks.{name}.monitor={monitor!r} is not a metric the run logs; choose one of: "
                              f"{', '.join(EPOCH_METRICS)}")  # fmt: skip


def seed_of(cfg: DictConfig) -> int:
    """The run's seed, an integer (``seed=abc`` fails here, not in the RNGs' seeding)."""
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return seed


def check_accelerator(accelerator: str) -> None:
    """An accelerator this machine lacks fails here, saying what torch sees and the fix."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
        raise ConfigError(
            f"trainer={accelerator} asks for a CUDA GPU, but torch {torch.__version__} ({build}) sees none "
            "(torch.cuda.is_available() is False); use trainer=cpu, or trainer=auto to take a GPU when there is one"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"trainer=mps asks for Apple's Metal GPU, but torch {torch.__version__} sees none "
            "(torch.backends.mps.is_available() is False); use trainer=cpu or trainer=auto"
        )


def instantiate_group(group: DictConfig | dict | None) -> list[Any]:
    """Instantiate every entry of a name -> config mapping (callbacks, loggers); None entries are off."""
    if not group:
        return []
    built = [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]
    return [item for item in built if item is not None]  # a factory may say "off" (early_stopping)


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
    """``instantiate`` that turns a constructor's own ValueError (our clear messages) into a
    ConfigError, instead of Hydra's InstantiationException wrapper around it."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        if isinstance(err.__cause__, ValueError):
            raise ConfigError(str(err.__cause__)) from err.__cause__
        raise


def build_activation_factory(cfg: DictConfig) -> Any:
    """The activation factory of ``cfg.activation``, tried once on a small batch: a field of
    the wrong type (``activation.negative_slope=abc``) fails here, naming the field values."""
    factory = _build(cfg)
    try:
        build_activation(factory, 4)(torch.linspace(-2, 2, 8).reshape(2, 4))
    except Exception as err:
        fields = {k: v for k, v in OmegaConf.to_container(cfg).items() if not k.startswith("_")}
        raise ConfigError(
            f"activation {cfg._target_} cannot be evaluated with fields {fields}: {type(err).__name__}: {err}"
        ) from err
    return factory


def build_data_and_classifier(cfg: DictConfig) -> tuple[L.LightningDataModule, Classifier]:
    """The DataModule and the LightningModule of a config (no trainer). The model's input and
    output sizes come from the DataModule, so a data change cannot mismatch the network."""
    validate_config(cfg)
    datamodule = _build(cfg.data)
    net = _build(
        cfg.model,
        activation=build_activation_factory(cfg.activation),
        input_size=datamodule.input_size,
        num_classes=datamodule.num_classes,
    )
    scheduler = _build(cfg.scheduler) if cfg.get("scheduler") else None
    classifier = Classifier(net=net, optimizer=_build(cfg.optimizer), scheduler=scheduler,
                            compile=cfg.get("compile", False),
                            steps_per_call=cfg.get("train_steps_per_call", 1))  # fmt: skip
    return datamodule, classifier


def build_trainer(cfg: DictConfig, record: RunRecord | None, output_dir: Path, resumes_at: int | None = None
                  ) -> L.Trainer:  # fmt: skip
    """The Trainer of ``cfg.trainer`` with the run's bookkeeping callbacks around the
    configured ones: divergence first (stop before the diagnostics see NaNs), the history
    last (it times the rest). The progress bar is on only where stdout is a terminal.
    ``resumes_at``: the global step of the checkpoint the fit resumes from (:func:`build_loggers`)."""
    callbacks = [
        RequeueGuard(),  # SLURM's requeue checkpoint taken where the run resumes as it goes on
        DivergenceMonitor(),
        *configured_callbacks(cfg),
        RunHistory(record, log_epochs=not shows_progress_bar(cfg)),
    ]
    return trainer_for(cfg, callbacks, build_loggers(cfg, resumes_at))


def build_loggers(cfg: DictConfig, resumes_at: int | None = None) -> list:
    """The loggers of ``cfg.logger``. A fit resumed from a checkpoint at global step ``resumes_at``
    logs again what the interrupted attempt logged after it: TensorBoard's event files, which a
    resumed run appends to, are told to hide the earlier attempt's events from the step after
    the checkpoint's on (SummaryWriter's ``purge_step``; what was logged up to the checkpoint's
    step stays), so each step shows once; -1: a fresh start over an earlier attempt's files (all
    of its events hidden). Purging goes by step: after a checkpoint taken inside an epoch, the
    epoch-end scalars of that epoch show twice (equal values). The CSV logger keeps its own rows
    apart (``actlab.csv_logger``)."""
    loggers = []
    for entry in (cfg.get("logger") or {}).values():
        if entry is None or "_target_" not in entry:
            continue
        logger = instantiate(entry)
        if resumes_at is not None and _is_tensorboard(logger):  # built again, told what to hide
            logger = instantiate(entry, purge_step=resumes_at + 1)
        if logger is not None:  # a factory may say "off"
            loggers.append(logger)
    return loggers


def _is_tensorboard(logger: Any) -> bool:
    """Lightning's TensorBoardLogger (either package's), or a subclass: it takes SummaryWriter's
    keyword arguments."""
    return any(cls.__name__ == "TensorBoardLogger" for cls in type(logger).__mro__)


def resume_step(resume: Resume, cfg: DictConfig, root_dir: Path) -> int | None:
    """The global step a fit goes on from, for :func:`build_loggers`: its checkpoint's; else,
    where Lightning will resume a requeued SLURM job by itself, its requeue checkpoint's; -1
    for a fresh start asked to resume (``resume=true`` over an attempt that left no
    checkpoint); None for a plain fresh start."""
    if resume.checkpoint is not None:
        return resume.checkpoint.get("global_step")
    requeue = slurm_requeue_checkpoint(root_dir)
    if requeue is not None:
        with contextlib.suppress(Exception):  # one that does not load: Lightning's to report
            checkpoint = torch.load(requeue, map_location="cpu", weights_only=False, mmap=True)  # no tensor read
            if warning := fresh_shuffle_warning(checkpoint):
                log.warning("resume: %s: %s", requeue, warning)
            checkpoint = {key: checkpoint[key] for key in ("epoch", "global_step", "loops") if key in checkpoint}
            log.info("resume: %s %s", root_dir, resume_description(Resume(str(requeue), checkpoint))
                     .replace("from ", "from Lightning's SLURM requeue checkpoint ", 1))  # fmt: skip
            return checkpoint.get("global_step")
    return -1 if cfg.get("resume") else None


def slurm_requeue_checkpoint(root_dir: Path) -> Path | None:
    """The checkpoint Lightning resumes a requeued SLURM job from by itself (its newest
    ``hpc_ckpt_<n>.ckpt`` in the trainer's root directory, under SLURM), or None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    versions = [int(p.stem.split("_")[-1]) for p in Path(root_dir).glob("hpc_ckpt_*.ckpt")
                if p.stem.split("_")[-1].isdigit()]  # fmt: skip
    if not versions or not SLURMEnvironment.detect():  # (detect() warns where srun is installed but not used)
        return None
    return Path(root_dir) / f"hpc_ckpt_{max(versions)}.ckpt"


def configured_callbacks(cfg: DictConfig, targets: set[str] | None = None) -> list[L.Callback]:
    """The callbacks of ``cfg.callbacks`` (those whose ``_target_`` is in ``targets``, when
    given), the progress bar only where it shows."""
    progress = shows_progress_bar(cfg)
    entries = {name: entry for name, entry in (cfg.get("callbacks") or {}).items()
               if entry is not None and (targets is None or entry.get("_target_") in targets)}  # fmt: skip
    return [c for c in instantiate_group(entries) if progress or not isinstance(c, ProgressBar)]


def shows_progress_bar(cfg: DictConfig) -> bool:
    """The progress bar is on where asked for and stdout is a terminal (one log line per epoch otherwise)."""
    return bool(cfg.trainer.get("enable_progress_bar", True)) and is_terminal()


def trainer_for(cfg: DictConfig, callbacks: list[L.Callback], loggers: list, **overrides: Any) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with these callbacks and loggers: the one engine of single
    runs and packs (a pack adds its checkpoint plugin and its own root directory)."""
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, enable_progress_bar=shows_progress_bar(cfg),
                       **overrides)  # fmt: skip


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint's contents, or None where it does not load (truncated, corrupt, or not a
    checkpoint at all)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return None


@dataclass
class Resume:
    """Where a run (or a pack member) resumes from: its checkpoint (None: a fresh start), and,
    where that is not its ``last.ckpt``, why (``previous``: the record of the attempt it
    abandons, whose history its new record keeps)."""

    path: str | None = None
    checkpoint: dict | None = None
    warning: str | None = None
    previous: dict | None = None


def ends_an_epoch(checkpoint: dict[str, Any]) -> bool:
    """Whether ``checkpoint`` was taken at an epoch's end (where ModelCheckpoint saves: the epoch
    processed, not yet completed), not inside an epoch."""
    counts = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return bool(counts) and counts["ready"] == counts["started"] == counts["processed"] == counts["completed"] + 1


def resume_point(output_dir: Path, max_steps: int = -1) -> Resume:
    """What ``resume=true`` resumes from: ``last.ckpt``, else the newest other checkpoint of
    the run that loads, else none (a fresh start, with a warning where there were some).

    A run bounded by ``trainer.max_steps`` does not resume from an epoch's end: Lightning would
    run that epoch's end again with no training (Lightning issue #19617), logging zero training
    metrics over the epoch's real rows and spending patience: a ConfigError says so first."""
    directory = output_dir / CHECKPOINT_DIR
    last = directory / "last.ckpt"
    others = sorted((p for p in directory.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = ([last] if last.is_file() else []) + others
    for path in candidates:
        checkpoint = load_checkpoint(path)
        if checkpoint is not None and max_steps != -1 and ends_an_epoch(checkpoint):
            raise ConfigError(f"{path} was taken at an epoch's end, and Lightning resumes a run with "
                              "trainer.max_steps from there by running that epoch's end again without training "
                              "(Lightning issue #19617): resume without trainer.max_steps "
                              "(trainer.max_epochs sets the length)")  # fmt: skip
        if checkpoint is not None:
            fresh_shuffle = fresh_shuffle_warning(checkpoint)
            if path == last or not last.is_file():
                return Resume(str(path), checkpoint, fresh_shuffle)
            warning = "; ".join(filter(None, [f"{last} does not load; resuming from {path}", fresh_shuffle]))
            return Resume(str(path), checkpoint, warning, read_record(output_dir))
    if candidates:
        warning = f"no checkpoint of {directory} loads ({', '.join(p.name for p in candidates)}); starting afresh"
        return Resume(None, None, warning, read_record(output_dir))
    return Resume()


def resume_description(resume: Resume) -> str:
    """Where a resume goes on from, in words: ``from <checkpoint> (after epoch 3, step 1290)``,
    ``inside epoch 4`` for a checkpoint taken inside an epoch, or a fresh start."""
    if resume.path is None or resume.checkpoint is None:
        return "from the start (no checkpoint)"
    checkpoint = resume.checkpoint
    epoch, step = checkpoint.get("epoch", 0) + 1, checkpoint.get("global_step")
    where = f"after epoch {epoch}" if ends_an_epoch(checkpoint) else f"inside epoch {epoch}"
    return f"from {resume.path} ({where}, step {step})"


def open_record(cfg: DictConfig, output_dir: Path, activation: str | None, overrides: list[str] | None,
                resume: Resume, **fields: Any) -> RunRecord:  # fmt: skip
    """The record of a run (or pack member) about to start or resume: its config, and what a
    resume starts from (the history its checkpoint holds, so that the record keeps it even if
    this attempt never trains; an abandoned attempt under ``previous_attempt``)."""
    return RunRecord(
        output_dir,
        activation=activation,
        overrides=list(overrides or []),
        seed=cfg.get("seed"),
        config=OmegaConf.to_container(cfg, resolve=True),
        resumed_from=resume.path,
        resume_warning=resume.warning,
        previous_attempt=previous_attempt(resume.previous) if resume.previous else None,
        **history_fields(resume.checkpoint),
        **fields,
    )


def history_fields(checkpoint: dict | None) -> dict[str, Any]:
    """The record's history fields as ``checkpoint`` holds them (RunHistory's state)."""
    if checkpoint is None or "RunHistory" not in checkpoint.get("callbacks", {}):
        return {}
    history = RunHistory()
    history.load_state_dict(checkpoint["callbacks"]["RunHistory"])
    return history.record_fields(None)


def model_fields(classifier: L.LightningModule) -> dict[str, Any]:
    """What a record says of the model built: depth, hidden shape, init, parameter count."""
    net = classifier.net
    return {"depth": net.depth, "hidden_shape": net.hidden_shape, "init": getattr(net, "initialised_with", None),
            "num_parameters": sum(p.numel() for p in classifier.parameters())}  # fmt: skip


def accelerator_name(trainer: L.Trainer) -> str:
    """The record's ``accelerator``: ``cpu``, ``cuda``, ``mps``."""
    return type(trainer.accelerator).__name__.replace("Accelerator", "").lower()


def configure_process(cfg: DictConfig, parallel_jobs: int | None) -> None:
    """Process-wide settings of a run: matmul precision, threads, quiet dependencies (the
    seeds are each run's: :func:`seed_run`)."""
    quiet_third_party_noise()
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    threads = cfg.get("threads") or default_threads(parallel_jobs)
    if threads:
        torch.set_num_threads(threads)


def seed_run(cfg: DictConfig) -> None:
    """Seed torch, numpy and Python's RNGs (and dataloader workers) with the run's seed."""
    L.seed_everything(seed_of(cfg), workers=True, verbose=False)


def call_trainer(trainer: L.Trainer, method: str, *args: Any, **kwargs: Any) -> Any:
    """``trainer.fit`` / ``trainer.test``, with Ctrl-C surfacing as KeyboardInterrupt
    (Lightning turns it into ``sys.exit(1)`` after its own graceful shutdown)."""
    try:
        return getattr(trainer, method)(*args, **kwargs)
    except SystemExit as err:
        if isinstance(err, SIGTERMException) or trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        raise KeyboardInterrupt from err


def timed_fit(trainer: L.Trainer, module: L.LightningModule, datamodule, ckpt_path: str | None,
              records: list[RunRecord]) -> None:  # fmt: skip
    """``trainer.fit``, its wall time in each record (``fit_time_s``, also when it fails), and
    Lightning's own SLURM requeue checkpoint as ``resumed_from`` where the fit took one."""
    start = time.perf_counter()
    try:
        call_trainer(trainer, "fit", module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        for record in records:
            record.update(fit_time_s=time.perf_counter() - start)
    if trainer.ckpt_path and trainer.ckpt_path != ckpt_path:
        for record in records:
            record.update(resumed_from=trainer.ckpt_path)
    # A finished fit has spent its SLURM requeue checkpoints; left in place, Lightning would
    # load them into the model for trainer.test() (any ckpt_path=None under SLURM means "hpc").
    for spent in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
        spent.unlink()


def fit_and_test(cfg: DictConfig, trainer: L.Trainer, module: Classifier, datamodule, record: RunRecord,
                 resume_from: str | None) -> None:  # fmt: skip
    timed_fit(trainer, module, datamodule, resume_from, [record])
    # a resumed fit with no epoch left to run calls no epoch hooks: take the restored history
    (history,) = (c for c in trainer.callbacks if isinstance(c, RunHistory))
    record.update(**history.record_fields(trainer))
    stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    record.update(**stop_fields(trainer, stopper, history))
    if cfg.get("test_after_fit", True):
        which = cfg.get("test_ckpt", "last")
        checkpoint = best_checkpoint(trainer.callbacks, "val/acc") if which == "best" else None
        record.update(test_ckpt=tested_checkpoint(which, checkpoint, record))
        (results,) = call_trainer(trainer, "test", module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
        record.update(**{k: v for k, v in results.items() if k.startswith("test/")})


def stop_fields(trainer: L.Trainer, stopper: EarlyStopping | None, history: RunHistory) -> dict[str, Any]:
    """How a fit that ended before its length (``max_epochs``; ``max_steps`` is a length too)
    stopped: ``stopped_epoch``, the last epoch it ran, and ``stop_reason``: ``early_stopping``,
    ``rate_halving`` (a pack member) or ``max_time`` (``trainer.max_time`` or a Timer callback).
    Both None for a fit that ran its length."""
    halved = getattr(stopper, "halved_epoch", None)  # a pack member stopped by rate halving
    if halved is not None:
        return {"stopped_epoch": halved, "stop_reason": "rate_halving"}
    if stopper is not None and stopper.stopped_epoch:
        return {"stopped_epoch": stopper.stopped_epoch, "stop_reason": "early_stopping"}
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    ran = len(history.epoch_times)
    short = bool(history.partial_epochs) or trainer.max_epochs in (None, -1) or ran < trainer.max_epochs
    remaining = timer.time_remaining() if timer is not None else None
    if ran and short and remaining is not None and remaining <= 0:
        return {"stopped_epoch": ran - 1, "stop_reason": "max_time"}
    return {"stopped_epoch": None, "stop_reason": None}


def last_epoch(record: dict[str, Any]) -> int | None:
    """The epoch the weights at the end of a fit are from: the last the history holds (a cut
    one too, which ``epochs_completed`` does not count)."""
    epochs = len(record.get("epoch_times_s") or [])
    return epochs - 1 if epochs else None


def best_checkpoint(callbacks: list[L.Callback], monitor: str) -> str:
    """The best checkpoint of the ModelCheckpoint that monitors ``monitor`` (``test_ckpt=best``)."""
    best = next((c.best_model_path for c in callbacks
                 if isinstance(c, ModelCheckpoint) and c.monitor == monitor and c.best_model_path), None)  # fmt: skip
    if best is None:
        raise ConfigError("test_ckpt=best needs the val/acc ModelCheckpoint (callbacks.model_checkpoint)")
    return best


def tested_checkpoint(which: str, checkpoint: str | None, record: RunRecord,
                      contents: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The record's ``test_ckpt``: which weights are tested (``last``: those in memory, the
    last epoch's; ``best``: ``checkpoint``, whose ``contents`` are read unless given), the
    epoch they are from, and the file."""
    if which not in ("last", "best"):
        raise ConfigError(f"test_ckpt must be last or best, got {which!r}")
    if checkpoint is None:
        return {"which": which, "epoch": last_epoch(record.data), "path": None}
    contents = contents if contents is not None else load_checkpoint(Path(checkpoint))
    if contents is None:
        raise RuntimeError(f"the checkpoint to test, {checkpoint}, does not load")
    return {"which": which, "epoch": int(contents["epoch"]), "path": checkpoint}


def write_final_hparams(loggers: list, record: dict[str, Any], step: int) -> None:
    """A completed run's HPARAMS row in TensorBoard: its settings and final metrics."""
    write_hparams(loggers, run_hparams(record), {k: record.get(k) for k in HPARAM_METRICS}, step)


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
    Returns the run record (also ``output_dir/metrics.json``; :class:`RunRecord` says how
    each ending is recorded). With ``resume=true`` a completed run is skipped and any other
    resumes from its newest checkpoint that loads (a diverged run is a result too: skipped).
    """
    output_dir = Path(output_dir)
    previous = check_run_directory(output_dir, bool(cfg.get("resume")))
    resume = Resume()
    if cfg.get("resume"):
        if previous and previous.get("status") in RESULTS:
            log.info("resume: %s already %s, skipping", output_dir, previous["status"])
            return previous
        resume = resume_point(output_dir, cfg.trainer.get("max_steps", -1))
        if resume.warning:
            log.warning("resume: %s", resume.warning)
        status = f" ({previous['status']})" if previous and previous.get("status") else ""
        log.info("resume: %s%s %s", output_dir, status, resume_description(resume))
    record = open_record(cfg, output_dir, activation, overrides, resume)
    resumes_at = resume_step(resume, cfg, Path(cfg.trainer.get("default_root_dir") or output_dir))
    resume.checkpoint = None  # Lightning loads it again for the fit: not kept in memory meanwhile
    trainer = None
    try:
        with record:
            configure_process(cfg, parallel_jobs)
            seed_run(cfg)
            datamodule, module = build_data_and_classifier(cfg)
            record.update(**model_fields(module))
            trainer = build_trainer(cfg, record, output_dir, resumes_at)
            record.update(accelerator=accelerator_name(trainer))
            fit_and_test(cfg, trainer, module, datamodule, record, resume.path)
    except UserError:
        raise  # a mistake to fix: its caller says it in one line, the record keeps the traceback
    except BaseException:
        log.info(summary_line(record.data))
        raise
    log.info(summary_line(record.data))
    if record.data["status"] == "completed":
        write_final_hparams(trainer.loggers, record.data, trainer.global_step)
    return record.data


def previous_attempt(record: dict[str, Any]) -> dict[str, Any]:
    """What a record keeps of an attempt a resume abandons (its history, under ``previous_attempt``)."""
    keys = ("status", "started_at", "updated_at", "epochs_completed", "history", "epoch_times_s")
    return {k: record.get(k) for k in keys}
