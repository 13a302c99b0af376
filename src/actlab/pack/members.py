"""Which jobs of a sweep may share a pack, and which must run alone (fail-closed).

A pack honours an option only where it is known to mean in a pack what it means in a single
run (tested in ``tests/test_pack_options.py``); any other option, including one this module
has never heard of, sends the job to a single run, with the reason in one log line.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# config keys that may differ between the members of one pack
MEMBER_KEYS = ("seed", "activation")
# optimiser settings that may differ too (each member's parameter group has its own)
MEMBER_OPTIMIZER_KEYS = ("lr", "weight_decay")

# trainer settings Lightning applies to a pack exactly as to a single run (the same Trainer
# drives both): every other key refuses packing
HONOURED_TRAINER_KEYS = {
    "_target_", "default_root_dir", "max_epochs", "max_steps", "accelerator", "precision", "log_every_n_steps",
    "enable_model_summary", "enable_progress_bar", "deterministic", "benchmark", "limit_train_batches",
    "limit_val_batches", "limit_test_batches", "num_sanity_val_steps", "accumulate_grad_batches", "inference_mode",
}  # fmt: skip
MAX_TIME = "would stop a pack of K runs after 1/K of each run's time"
# trainer settings a pack cannot honour, with why; each is fine at its neutral values
TRAINER_REFUSALS = {
    "gradient_clip_val": ("clips by the norm over all parameters, which in a pack would couple its members", (0,)),
    "gradient_clip_algorithm": ("clips by the norm over all parameters, which would couple a pack's members",
                                ("norm",)),
    "devices": ("asks for several devices (one process per device)", (1, "1")),
    "fast_dev_run": ("is a one-batch smoke test of the loop (no checkpoints, no loggers)", (False, 0)),
    "overfit_batches": ("changes how the training batches are drawn, which a pack does per member", (0,)),
    "val_check_interval": ("validates inside an epoch, where pack members checkpoint at epoch ends only", (1.0,)),
    "max_time": (MAX_TIME, ()),
    "min_epochs": ("keeps a single run going past early stopping, which a pack does per member", (0,)),
    "min_steps": ("keeps a single run going past early stopping, which a pack does per member", (0,)),
    "check_val_every_n_epoch": ("is not known to mean in a pack what it means in a single run", (1,)),
    "reload_dataloaders_every_n_epochs": ("would rebuild the members' batch-order streams", (0,)),
}  # fmt: skip
UNKNOWN = "is not known to mean in a pack what it means in a single run"
# Lightning callbacks that only read the trainer (and log to every member)
SHARED_CALLBACKS = {
    "lightning.pytorch.callbacks.TQDMProgressBar", "lightning.pytorch.callbacks.RichProgressBar",
    "lightning.pytorch.callbacks.LearningRateMonitor",
}  # fmt: skip
# Lightning callbacks a pack cannot honour, with why
CALLBACK_REFUSALS = {"lightning.pytorch.callbacks.Timer": MAX_TIME}
# callbacks a pack applies across its members (actlab.pack.callbacks.PackRateHalving)
PACK_WIDE_CALLBACKS = {"actlab.callbacks.RateHalving"}
# callbacks a pack runs once per member
# ModelCheckpoint, Lightning's or actlab's (the same, its state key built once)
CHECKPOINT_TARGETS = {"lightning.pytorch.callbacks.ModelCheckpoint", "actlab.callbacks.ModelCheckpoint"}
PER_MEMBER_CALLBACKS = CHECKPOINT_TARGETS | {
    "actlab.callbacks.early_stopping",
    "actlab.callbacks.GradientHistograms", "actlab.callbacks.LayerOutputHistograms",
    "actlab.callbacks.DeadNeuronMonitor", "actlab.callbacks.GradientFlow",
    "actlab.callbacks.ActivationParameterMonitor", "actlab.callbacks.ActivationPlot",
}  # fmt: skip
MEMBER_LOGGERS = {
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.loggers.CSVLogger",
    "actlab.csv_logger.CSVLogger",
}
# elementwise optimisers: one step over stacked parameters is K separate steps
STACKABLE_OPTIMIZERS = {"torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW"}
# schedules that are a function of the step count alone (actlab.schedulers)
STACKABLE_SCHEDULERS = {"actlab.schedulers.cosine", "actlab.schedulers.step", "actlab.schedulers.onecycle"}


@dataclass
class Member:
    """One run of a pack: its composed config (resolved, Hydra-free) and where it writes;
    ``exact``: its pack computes it with its single run's own kernels, to the bit
    (``hydra.launcher.exact``; see :class:`~actlab.pack.stacked.StackedNetwork`)."""

    cfg: DictConfig
    output_dir: Path
    activation: str | None = None
    overrides: list[str] = field(default_factory=list)
    exact: bool = False
    # the jobs of the sweep in this member's rate-halving group (None: not counted); a pack
    # compares a group's rates only when it holds all of them
    halving_peers: int | None = None


def member_settings(cfg: DictConfig) -> dict:
    """The optimiser settings of ``cfg`` that may differ between the members of a pack."""
    optimizer = cfg.get("optimizer") or {}
    return {key: optimizer[key] for key in MEMBER_OPTIMIZER_KEYS if key in optimizer}


def settings_order(cfg: DictConfig) -> tuple:
    """Where a member goes in its pack: members with equal optimiser settings side by side
    (each run of them is one parameter group of the pack's optimiser), and among those, members
    with one activation config side by side (each run of them is one call per layer)."""
    settings = tuple(float(value) if isinstance(value, (int, float)) else str(value)
                     for value in member_settings(cfg).values())  # fmt: skip
    activation = json.dumps(OmegaConf.to_container(cfg.activation, resolve=True), sort_keys=True, default=str)
    return (*settings, activation)


def halving_group(cfg: DictConfig) -> str | None:
    """The rate-halving group of a run among the runs of its :func:`pack_key`: the rates of one
    activation (and weight decay) are compared (None: the run asks for no rate halving)."""
    entry = (cfg.get("callbacks") or {}).get("rate_halving")
    if entry is None or "_target_" not in entry:
        return None
    activation = OmegaConf.to_container(cfg.activation, resolve=True)
    weight_decay = (cfg.get("optimizer") or {}).get("weight_decay")
    return json.dumps([activation, weight_decay], sort_keys=True, default=str)


def pack_key(cfg: DictConfig) -> str:
    """What must be equal for runs to share a pack: the whole config but the members' own
    keys (seed, activation, learning rate, weight decay) and where each writes."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in MEMBER_KEYS:
        container.pop(key, None)
    for key in MEMBER_OPTIMIZER_KEYS:
        (container.get("optimizer") or {}).pop(key, None)
    container.pop("paths", None)
    # callbacks, loggers, trainer point into the run: replaced before JSON escapes the directory's name
    # (an override with a colon, a time, is written `\:` in it)
    return json.dumps(_in_any_run(container, str(cfg.paths.output_dir)), sort_keys=True, default=str)


def _in_any_run(value, output_dir: str):
    """``value`` with the run's directory written ``<run>`` in every string it holds."""
    if isinstance(value, str):
        return value.replace(output_dir, "<run>")
    if isinstance(value, dict):
        return {key: _in_any_run(v, output_dir) for key, v in value.items()}
    if isinstance(value, list):
        return [_in_any_run(v, output_dir) for v in value]
    return value


def packing_refusal(cfg: DictConfig) -> str | None:
    """Why the run ``cfg`` describes cannot be trained in a pack (None: it can)."""
    for check in (_trainer_refusal, _callbacks_refusal, _logger_refusal, _model_refusal):
        reason = check(cfg)
        if reason:
            return reason
    return None


def _trainer_refusal(cfg: DictConfig) -> str | None:
    for key, value in cfg.trainer.items():
        if key in HONOURED_TRAINER_KEYS or value is None:
            continue
        reason, neutral = TRAINER_REFUSALS.get(key, (UNKNOWN, ()))
        if value not in neutral:
            return f"trainer.{key}={value} {reason}"
    return None


def _target(entry) -> str:
    return str(entry.get("_target_", "")) if isinstance(entry, DictConfig) else ""


def _callbacks_refusal(cfg: DictConfig) -> str | None:
    for name, entry in (cfg.get("callbacks") or {}).items():
        if entry is None or (isinstance(entry, DictConfig) and "_target_" not in entry):
            continue  # off, or settings left for a callback that is off (built by neither path)
        target = _target(entry)
        if target in CALLBACK_REFUSALS:
            return f"callbacks.{name} ({target}) {CALLBACK_REFUSALS[target]}"
        if target not in SHARED_CALLBACKS | PER_MEMBER_CALLBACKS | PACK_WIDE_CALLBACKS:
            return f"callbacks.{name} ({target or 'no _target_'}) is not known to work per member in a pack"
        if target in CHECKPOINT_TARGETS:
            fields = {f for _, f, _, _ in string.Formatter().parse(str(entry.get("filename") or "")) if f}
            if not fields <= {"epoch", "step"}:
                return f"callbacks.{name}.filename names metrics {sorted(fields - {'epoch', 'step'})}: " \
                       "a pack's member checkpoints know only epoch and step"  # fmt: skip
            if entry.get("every_n_train_steps") or entry.get("train_time_interval"):
                return f"callbacks.{name} checkpoints inside an epoch, where pack members save at epoch ends only"
    return None


def _logger_refusal(cfg: DictConfig) -> str | None:
    for name, entry in (cfg.get("logger") or {}).items():
        if entry is not None and _target(entry) not in MEMBER_LOGGERS:
            return f"logger.{name} ({_target(entry)}) is not known to write per member in a pack"
    return None


def _model_refusal(cfg: DictConfig) -> str | None:
    if cfg.model.get("share_activation"):
        return "model.share_activation=true shares one activation between layers, which a stacked pack cannot"
    if cfg.get("compile"):
        return "compile=true is not supported for the stacked network of a pack"
    if _target(cfg.optimizer) not in STACKABLE_OPTIMIZERS:
        return f"optimizer {_target(cfg.optimizer)} is not known to be elementwise (SGD, Adam, AdamW are)"
    if cfg.get("scheduler") and _target(cfg.scheduler) not in STACKABLE_SCHEDULERS:
        return f"scheduler {_target(cfg.scheduler)} follows each run's own metric and cannot be shared by a pack"
    return None


__all__ = ["Member", "member_settings", "pack_key", "packing_refusal", "settings_order"]
