"""Train a pack: K runs of one architecture in one process, as one StackedNetwork.

Member k is the run ``python train.py <its overrides>`` would have done: the same initial
weights (built from its own seed by the single run's own builder), its own batch order (a
generator holding the global RNG state the single run would shuffle with), the same
optimiser semantics (SGD and Adam are elementwise, so one step over the stacked parameters
is K separate steps), the same record, checkpoints, TensorBoard and figures in its own
directory. Nothing couples members: the pack's loss is the sum of the members' losses, so
each member's gradients are its own, and a member whose loss stops being finite is recorded
``diverged`` and frozen while the others go on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from actlab.callbacks import ActivationPlot, DeadNeuronMonitor, GradientHistograms, LayerOutputHistograms
from actlab.callbacks.diagnostic import Diagnostic
from actlab.callbacks.early_stopping import metric_mode
from actlab.console import summary_line
from actlab.errors import ConfigError, DivergedError
from actlab.pack.checkpoint import save_member_checkpoint
from actlab.pack.diagnostics import layer_names, member_layer_outputs, member_weight_gradients, scan_members
from actlab.pack.stacked import StackedNetwork
from actlab.plotting import confusion_matrix_figure
from actlab.record import RunRecord, read_record
from actlab.tensorboard import run_hparams, tensorboard_writers, write_hparams
from actlab.training import (
    CHECKPOINT_DIR,
    HPARAM_METRICS,
    _instantiate_group,
    build_data_and_classifier,
    check_accelerator,
    configure_process,
    load_checkpoint,
)

log = logging.getLogger(__name__)
# config keys that may differ between the members of one pack
MEMBER_KEYS = ("seed", "activation")
CHECK_EVERY_N_STEPS = 50  # divergence checks (each one is a host sync on a GPU), as a single run's


@dataclass
class Member:
    """One run of a pack: its composed config (resolved, Hydra-free) and where it writes."""

    cfg: DictConfig
    output_dir: Path
    activation: str | None = None
    overrides: list[str] = field(default_factory=list)


def pack_key(cfg: DictConfig) -> str:
    """What must be equal for runs to share a pack: the whole config but the members' own
    keys (seed, activation) and where each writes."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in MEMBER_KEYS:
        container.pop(key, None)
    container.pop("paths", None)
    for group in ("callbacks", "logger", "trainer"):  # their paths point into each run's directory
        container[group] = json.loads(json.dumps(container.get(group), default=str).replace(
            str(cfg.paths.output_dir), "<run>"))  # fmt: skip
    return json.dumps(container, sort_keys=True, default=str)


def refuse_what_would_couple_members(cfg: DictConfig) -> None:
    """Settings a pack cannot honour per member fail here, with the way out."""
    if cfg.trainer.get("gradient_clip_val"):
        raise ConfigError(
            "trainer.gradient_clip_val clips by the norm over all parameters, which in a pack would couple its "
            "members; run these jobs with hydra/launcher=basic (or local_parallel)"
        )
    if cfg.model.get("share_activation"):
        raise ConfigError("model.share_activation=true cannot be packed; use hydra/launcher=basic")
    if cfg.get("compile"):
        raise ConfigError("compile=true is not supported in a pack; use hydra/launcher=basic")


def _device(cfg: DictConfig) -> torch.device:
    accelerator = cfg.trainer.get("accelerator", "auto")
    check_accelerator(accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def _limit(limit: Any, batches: int) -> int:
    """Lightning's limit_*_batches: None = all, a float = fraction, an int = count."""
    if limit is None:
        return batches
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(batches * limit))
    return min(batches, int(limit))


def classification_metrics(confusion: torch.Tensor, loss_sum: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per member, from its confusion matrix ``(K, C, C)`` (rows true, columns predicted) and
    summed loss: mean loss, accuracy, macro F1 (torchmetrics' definition: a class with no true
    and no predicted sample scores 0), per-class accuracy (recall), the matrix itself."""
    confusion = confusion.double()
    count = confusion.sum((1, 2)).clamp(min=1)
    hits = confusion.diagonal(dim1=1, dim2=2)
    true, predicted = confusion.sum(2), confusion.sum(1)
    f1 = torch.where(true + predicted > 0, 2 * hits / (true + predicted).clamp(min=1), 0.0)
    return {
        "loss": (loss_sum / count).float(),
        "acc": (hits.sum(1) / count).float(),
        "f1": f1.mean(1).float(),
        "class_acc": (hits / true.clamp(min=1)).float(),
        "confusion": confusion.long(),
    }


class _MemberModule(nn.Module):
    """What a diagnostic callback needs of a LightningModule: the member's network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


@dataclass
class _MemberState:
    member: Member
    record: RunRecord
    index: int
    loggers: list
    diagnostics: list
    generator: torch.Generator
    epoch_times: list[float] = field(default_factory=list)
    diagnostics_times: list[float | None] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)
    best_val: float = -1.0
    best_monitored: float | None = None
    waited: int = 0
    stopped_epoch: int | None = None
    finished: bool = False
    checkpoint: dict | None = None


class PackTrainer:
    """Trains ``members`` (configs equal but for seed and activation) as one StackedNetwork."""

    def __init__(self, members: list[Member], pack_id: str = "pack", parallel_jobs: int | None = None,
                 log_file: str | None = None) -> None:  # fmt: skip
        if not members:
            raise ValueError("a pack needs at least one member")
        keys = {pack_key(m.cfg) for m in members}
        if len(keys) != 1:
            raise ConfigError("a pack's members must have equal configs but for seed and activation")
        self.members, self.pack_id = members, pack_id
        self.cfg = members[0].cfg
        refuse_what_would_couple_members(self.cfg)
        self.parallel_jobs, self.log_file = parallel_jobs, log_file

    # -- building ---------------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.cfg
        configure_process(cfg, self.parallel_jobs)
        self.device = _device(cfg)
        nets, self.states = [], []
        for index, member in enumerate(self.members):
            record = self._open_record(member, index)
            L.seed_everything(member.cfg.seed, workers=True, verbose=False)
            datamodule, module = build_data_and_classifier(member.cfg)
            generator = torch.Generator().set_state(torch.get_rng_state())  # the single run's shuffling stream
            record.update(depth=module.net.depth, hidden_shape=module.net.hidden_shape,
                          num_parameters=sum(p.numel() for p in module.parameters()),
                          accelerator=self.device.type)  # fmt: skip
            nets.append(module.net)
            loggers = _instantiate_group(member.cfg.get("logger"))
            diagnostics = [c for c in _instantiate_group(member.cfg.get("callbacks"))
                           if isinstance(c, (Diagnostic, ActivationPlot))]  # fmt: skip
            state = _MemberState(member, record, index, loggers, diagnostics, generator)
            self.states.append(state)
            self._resume_member(state, module.net)
        self.datamodule = datamodule
        self.datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=self.device))
        self.datamodule.setup("fit")
        keys = [
            json.dumps(OmegaConf.to_container(m.cfg.activation, resolve=True), sort_keys=True) for m in self.members
        ]
        self.net = StackedNetwork(nets, keys).to(self.device)
        self.optimizer = instantiate(cfg.optimizer)(self.net.parameters())
        self.active = torch.ones(len(self.members), dtype=torch.bool, device=self.device)
        # per frozen member: (stacked tensor, its index, the value to keep) for each of its tensors
        self.frozen: dict[int, list[tuple[torch.Tensor, int, torch.Tensor]]] = {}
        self.global_step, self.epoch = 0, 0
        self._build_scheduler()
        self._restore_optimizer()

    def _resume_member(self, state: _MemberState, net: nn.Module) -> None:
        """With ``resume=true``: load the member's ``last.ckpt`` (weights, history, shuffling
        stream); the optimiser's state follows once the pack's optimiser exists."""
        state.checkpoint = None
        path = state.member.output_dir / CHECKPOINT_DIR / "last.ckpt"
        if not state.member.cfg.get("resume") or not path.is_file():
            return
        checkpoint = load_checkpoint(path)
        if checkpoint is None or "actlab_pack" not in checkpoint:
            log.warning("pack %s: %s is not a pack checkpoint that loads; member starts afresh", self.pack_id, path)
            state.record.update(resume_warning=f"{path} does not load as a pack checkpoint; started afresh")
            return
        net.load_state_dict({key[len("net.") :]: value for key, value in checkpoint["state_dict"].items()})
        history = checkpoint["callbacks"]["RunHistory"]
        state.epoch_times, state.history = list(history["epoch_times"]), dict(history["history"])
        state.diagnostics_times = list(history["diagnostics_times"])
        state.generator.set_state(checkpoint["actlab_pack"]["generator"])
        state.best_val = checkpoint["actlab_pack"]["best_val"]
        state.checkpoint = checkpoint
        state.record.update(resumed_from=str(path))

    def _build_scheduler(self) -> None:
        """One learning-rate schedule for the whole pack (every member's lr is the same
        function of the step count); ``plateau``, which follows each run's own metric, cannot be."""
        self.scheduler = None
        if not self.cfg.get("scheduler"):
            return
        if self.cfg.scheduler.get("_target_", "").endswith(".plateau"):
            raise ConfigError("scheduler=plateau follows each run's own val metric and cannot be packed; "
                              "use hydra/launcher=basic or another scheduler")  # fmt: skip
        dm, epochs = self.datamodule, max(1, self.cfg.trainer.get("max_epochs") or 1)
        steps = _limit(self.cfg.trainer.get("limit_train_batches"), -(-len(dm.train_y) // dm.batch_size))
        self.scheduler = instantiate(self.cfg.scheduler)(self.optimizer, epochs, steps)

    def _restore_optimizer(self) -> None:
        """The pack optimiser's state, stacked from the resumed members' own states."""
        resumed = [s for s in self.states if s.checkpoint is not None]
        if not resumed:
            return
        epochs = {s.checkpoint["epoch"] for s in resumed}
        if len(resumed) != len(self.states) or len(epochs) != 1:
            raise ConfigError(f"pack {self.pack_id}: members' checkpoints are at different epochs {sorted(epochs)} "
                              "or missing; resume them with hydra/launcher=basic")  # fmt: skip
        self.epoch = epochs.pop() + 1
        self.global_step = resumed[0].checkpoint["global_step"]
        if self.scheduler is not None and resumed[0].checkpoint["lr_schedulers"]:
            self.scheduler["scheduler"].load_state_dict(resumed[0].checkpoint["lr_schedulers"][0])
        for state in resumed:
            names = [name for name, _ in self.net.member_templates[state.index].named_parameters()]
            member_state = state.checkpoint["optimizer_states"][0]["state"]
            slots = self.net.member_slots(state.index)
            for i, name in enumerate(names):
                tensor, j = slots[name]
                target = self.optimizer.state[tensor]
                for key, value in member_state.get(i, {}).items():
                    if torch.is_tensor(value) and value.dim() and j is not None:
                        target.setdefault(key, torch.zeros_like(tensor))[j] = value.to(tensor.device)
                    else:
                        target[key] = value.to(tensor.device) if torch.is_tensor(value) else value

    def _open_record(self, member: Member, index: int) -> RunRecord:
        record = RunRecord(
            member.output_dir,
            activation=member.activation,
            overrides=list(member.overrides),
            seed=member.cfg.get("seed"),
            config=OmegaConf.to_container(member.cfg, resolve=True),
            pack={"id": self.pack_id, "size": len(self.members), "index": index, "log": self.log_file},
        )
        record.__enter__()
        return record

    # -- one epoch --------------------------------------------------------------------------

    def _orders(self, n: int) -> torch.Tensor:
        return torch.stack([torch.randperm(n, generator=s.generator) for s in self.states]).to(self.device)

    def _train_epoch(self) -> dict[str, torch.Tensor]:
        dm, trainer_cfg = self.datamodule, self.cfg.trainer
        x, y, batch = dm.train_x, dm.train_y, dm.batch_size
        steps = _limit(trainer_cfg.get("limit_train_batches"), -(-len(y) // batch))
        orders = self._orders(len(y))
        epoch_lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this epoch starts at
        k = len(self.members)
        loss_sum = torch.zeros(k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(k, dtype=torch.long, device=self.device)
        count = 0
        self.net.train()
        for step in range(steps):
            index = orders[:, step * batch : (step + 1) * batch]
            targets = y[index]
            logits = self.net(x[index])
            losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(k, -1).mean(1)
            self.optimizer.zero_grad(set_to_none=True)
            torch.where(self.active, losses, 0.0).sum().backward()
            self.optimizer.step()
            if self.scheduler is not None and self.scheduler["interval"] == "step":
                self.scheduler["scheduler"].step()
            self.global_step += 1
            self._restore_frozen()
            with torch.no_grad():
                loss_sum += losses.detach().double() * targets.shape[1]
                correct += (logits.argmax(-1) == targets).sum(1)
            count += targets.shape[1]
            if self.global_step % CHECK_EVERY_N_STEPS == 0 or step == steps - 1:
                self._check_divergence(losses.detach())
        return {"loss": (loss_sum / max(count, 1)).float(), "acc": correct.double().div(max(count, 1)).float(),
                "lr": torch.full((k,), epoch_lr)}  # fmt: skip

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, limit: Any) -> dict[str, torch.Tensor]:
        """Every member's mean loss, accuracy, macro F1, per-class accuracy and confusion
        matrix (the metrics a single run logs through torchmetrics) on ``x, y``."""
        dm, k = self.datamodule, len(self.members)
        classes = self.net.weights[-1].shape[1]
        batch = dm.eval_batch_size
        batches = _limit(limit, -(-len(y) // batch))
        loss_sum = torch.zeros(k, dtype=torch.float64, device=self.device)
        confusion = torch.zeros(k * classes * classes, dtype=torch.long, device=self.device)
        offsets = torch.arange(k, device=self.device).unsqueeze(1) * classes * classes
        self.net.eval()
        for start in range(0, batches * batch, batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            logits = self.net(xb.unsqueeze(0).expand(k, *xb.shape))
            loss_sum += (
                F.cross_entropy(logits.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1).sum(1).double()
            )
            cells = offsets + yb * classes + logits.argmax(-1)
            confusion += torch.bincount(cells.flatten(), minlength=k * classes * classes)
        return classification_metrics(confusion.view(k, classes, classes), loss_sum)

    def _check_divergence(self, losses: torch.Tensor) -> None:
        diverged = (~torch.isfinite(losses)) & self.active
        for k in diverged.nonzero().flatten().tolist():
            state = self.states[k]
            error = DivergedError(f"training loss is {float(losses[k])} at epoch {self.epoch}, step {self.global_step}")
            log.warning("pack %s: member %d (%s) diverged: %s", self.pack_id, k, state.member.output_dir.name, error)
            self._freeze(k)
            self._finish(state, error)

    def _freeze(self, k: int) -> None:
        """Member ``k`` takes no more steps: its loss is masked out and its weights restored
        after every optimiser step (momentum would go on moving them)."""
        self.active[k] = False
        self.frozen[k] = [(v, j, v[j].detach().clone()) for v, j in self.net.member_slots(k).values() if j is not None]

    @torch.no_grad()
    def _restore_frozen(self) -> None:
        for slots in self.frozen.values():
            for tensor, j, value in slots:
                tensor[j] = value

    # -- per-member bookkeeping --------------------------------------------------------------

    def _trainer_view(self, state: _MemberState) -> SimpleNamespace:
        return SimpleNamespace(datamodule=self.datamodule, loggers=state.loggers, global_step=self.global_step,
                               current_epoch=self.epoch, fast_dev_run=False, is_global_zero=True)  # fmt: skip

    def _run_diagnostics(self, at_start: bool) -> None:
        """Every member's diagnostics: gradients, layer outputs and dead neurons measured once
        for the whole pack on the stacked network, the rest on each member's own network."""
        live = [s for s in self.states if not s.finished and s.stopped_epoch is None]
        due = self.global_step == 0 if at_start else True
        start = time.perf_counter()
        batched = self._measure_together(live, at_start) if due else set()
        shared = (time.perf_counter() - start) / max(1, len(live))
        for state in live:
            module = _MemberModule(self.net.member_network(state.index)).train()
            trainer = self._trainer_view(state)
            start = time.perf_counter()
            for diagnostic in state.diagnostics:
                if type(diagnostic) in batched:
                    continue
                if at_start:
                    diagnostic.on_train_start(trainer, module)
                elif isinstance(diagnostic, Diagnostic):
                    diagnostic.on_train_epoch_end(trainer, module)
            if not at_start:
                seconds = time.perf_counter() - start + shared
                state.diagnostics_times.append(seconds if state.diagnostics else None)

    def _measure_together(self, live: list[_MemberState], at_start: bool) -> set[type]:
        """The diagnostics one pass over the stacked network serves for every member; returns
        their types (each member's own instance only records its slice)."""
        done: set[type] = set()
        dm = self.datamodule
        for kind, measure in ((GradientHistograms, member_weight_gradients),
                              (LayerOutputHistograms, member_layer_outputs)):  # fmt: skip
            instances = [next((d for d in s.diagnostics if type(d) is kind), None) for s in live]
            if not instances or any(d is None for d in instances):
                continue
            first = instances[0]
            if at_start or (self.epoch + 1) % first.every_n_epochs == 0:
                was_training = self.net.training
                self.net.eval()
                try:
                    values = measure(
                        self.net, *dm.probe_set(first.probe_size)[: 2 if kind is GradientHistograms else 1]
                    )
                finally:
                    self.net.train(was_training)
                names = layer_names(self.net)[: len(values)]
                for state, instance in zip(live, instances):
                    mine = [v[state.index] for v in values]
                    instance.record_values(self._trainer_view(state), names, mine, self.global_step)
            done.add(kind)
        if self._scan_dead_neurons(live, at_start) is not None:
            done.add(DeadNeuronMonitor)
        return done

    def _scan_dead_neurons(self, live: list[_MemberState], at_start: bool) -> float | None:
        """One dead-neuron scan for all live members; returns its seconds (None: the members
        have no dead-neuron monitor)."""
        monitors = [next((d for d in s.diagnostics if isinstance(d, DeadNeuronMonitor)), None) for s in live]
        if not monitors or any(m is None for m in monitors):
            return None
        first = monitors[0]
        due = self.global_step == 0 if at_start else (self.epoch + 1) % first.every_n_epochs == 0
        if not due:
            return 0.0
        start = time.perf_counter()
        inputs, _ = self.datamodule.probe_set(first.probe_size)
        counters = scan_members(self.net, inputs, first)
        for state, monitor in zip(live, monitors):
            monitor.record_counters(self._trainer_view(state), counters[state.index], self.global_step)
        return time.perf_counter() - start

    def _end_epoch(self, epoch_time: float, train: dict, val: dict) -> None:
        for k, state in enumerate(self.states):
            if state.finished or state.stopped_epoch is not None:
                continue
            metrics = {f"train/{name}": float(v[k]) for name, v in train.items()}
            metrics.update({f"val/{name}": float(val[name][k]) for name in ("loss", "acc", "f1")})
            for name, value in metrics.items():
                state.history.setdefault(name, []).append(value)
            state.epoch_times.append(epoch_time)
            for logger in state.loggers:
                logger.log_metrics({**metrics, "epoch": self.epoch}, step=self.global_step)
            if metrics["val/acc"] > state.best_val:
                for old in (state.member.output_dir / CHECKPOINT_DIR).glob("best_epoch=*.ckpt"):
                    old.unlink()
                state.best_val = metrics["val/acc"]
                save_member_checkpoint(self, state, f"best_epoch={self.epoch:03d}.ckpt")
            save_member_checkpoint(self, state, "last.ckpt")
            self._stop_early(state, metrics)
            self._update_record(state)
            state.record.write()
        if self.scheduler is not None and self.scheduler["interval"] == "epoch":
            self.scheduler["scheduler"].step()

    def _stop_early(self, state: _MemberState, metrics: dict[str, float]) -> None:
        """Lightning's EarlyStopping rule, per member: stop once ``monitor`` has not improved
        by ``min_delta`` for ``patience`` epochs. A stopped member is frozen and tested with
        the others at the end."""
        settings = (state.member.cfg.get("callbacks") or {}).get("early_stopping") or {}
        if settings.get("patience") is None:
            return
        monitor = settings.get("monitor", "val/acc")
        sign = -1.0 if (settings.get("mode") or metric_mode(monitor)) == "min" else 1.0
        value = sign * metrics[monitor]
        if state.best_monitored is None or value > state.best_monitored + float(settings.get("min_delta", 0.0)):
            state.best_monitored, state.waited = value, 0
            return
        state.waited += 1
        if state.waited >= settings["patience"]:
            state.stopped_epoch = self.epoch
            self._freeze(state.index)
            log.info("pack %s: member %d stopped early at epoch %d", self.pack_id, state.index, self.epoch)

    def _update_record(self, state: _MemberState) -> None:
        val_acc = state.history.get("val/acc", [])
        state.record.update(
            epochs_completed=len(state.epoch_times),
            epoch_times_s=state.epoch_times,
            epoch_time_s=statistics.median(state.epoch_times) if state.epoch_times else None,
            diagnostics_epoch_s=state.diagnostics_times,
            history=state.history,
            stopped_epoch=state.stopped_epoch,
            best_epoch=max(range(len(val_acc)), key=val_acc.__getitem__) if val_acc else None,
            **{"val/acc_last": val_acc[-1] if val_acc else None, "val/acc_best": max(val_acc) if val_acc else None},
        )
        for diagnostic in state.diagnostics:
            if isinstance(diagnostic, Diagnostic):
                state.record.update(**diagnostic.record_fields())

    def _finish(self, state: _MemberState, error: BaseException | None) -> None:
        """Close a member's record with the outcome ``error`` stands for (None: completed)."""
        self._update_record(state)
        state.finished = True
        with contextlib.suppress(SystemExit):  # an interruption: the pack exits once, every member recorded
            state.record.__exit__(type(error) if error else None, error, error.__traceback__ if error else None)
        for logger in state.loggers:
            logger.finalize("success" if error is None else "failed")
        log.info(summary_line(state.record.data))

    # -- the whole run -----------------------------------------------------------------------

    def fit_and_test(self) -> list[dict[str, Any]]:
        """Train every member, test it, and close its record; returns the records."""
        self._build()
        max_epochs = self.cfg.trainer.get("max_epochs") or 1
        dm = self.datamodule
        try:
            self._run_diagnostics(at_start=True)
            start_fit = time.perf_counter()
            while self.epoch < max_epochs and bool(self.active.any()):
                start = time.perf_counter()
                train = self._train_epoch()
                val = self._evaluate(dm.val_x, dm.val_y, self.cfg.trainer.get("limit_val_batches"))
                self._run_diagnostics(at_start=False)
                with _signals_deferred():  # every member's checkpoint of this epoch, or none
                    self._end_epoch(time.perf_counter() - start, train, val)
                log.info("pack %s: epoch %d/%d done in %.1f s, %d of %d members training on", self.pack_id,
                         self.epoch + 1, max_epochs, time.perf_counter() - start, int(self.active.sum()),
                         len(self.states))  # fmt: skip
                self.epoch += 1
            fit_time = time.perf_counter() - start_fit
            live = [state for state in self.states if not state.finished]
            for state in live:
                state.record.update(fit_time_s=fit_time)
            if self.cfg.get("test_after_fit", True):
                self._test(live)
            for state in live:
                self._save_figures(state)
                self._finish(state, None)
                final = {key: state.record.data.get(key) for key in HPARAM_METRICS}
                write_hparams(state.loggers, run_hparams(state.record.data), final, self.global_step)
        except (KeyboardInterrupt, SIGTERMException) as interruption:
            # every member's last.ckpt is its last finished epoch (written as each epoch ends):
            # resume=true continues from there, the interrupted epoch's part is run again
            for state in self.states:
                if not state.finished:
                    self._finish(state, interruption)
            signum = signal.SIGTERM if isinstance(interruption, SIGTERMException) else signal.SIGINT
            raise SystemExit(128 + signum) from interruption
        except BaseException as error:
            for state in self.states:
                if not state.finished:
                    self._finish(state, error)
            raise
        return [s.record.data for s in self.states]

    def _test(self, live: list[_MemberState]) -> None:
        """Test every live member at once, on its last weights or (``test_ckpt=best``) its
        best epoch's, loaded from its own best checkpoint into its slot of the pack."""
        which = self.cfg.get("test_ckpt", "last")
        tested_epoch = {}
        for state in live:
            tested_epoch[state.index] = len(state.epoch_times) - 1
            if which == "best":
                (best,) = (state.member.output_dir / CHECKPOINT_DIR).glob("best_epoch=*.ckpt")
                checkpoint = load_checkpoint(best)
                tested_epoch[state.index] = checkpoint["epoch"]
                self._load_member(state.index, checkpoint)
                state.record.update(test_ckpt={"which": which, "epoch": checkpoint["epoch"], "path": str(best)})
            else:
                state.record.update(test_ckpt={"which": which, "epoch": tested_epoch[state.index], "path": None})
        dm = self.datamodule
        test = self._evaluate(dm.test_x, dm.test_y, self.cfg.trainer.get("limit_test_batches"))
        for state in live:
            k = state.index
            metrics = {"test/loss": test["loss"][k], "test/acc": test["acc"][k], "test/f1": test["f1"][k],
                       **{f"test/acc_class_{c}": v for c, v in enumerate(test["class_acc"][k])}}  # fmt: skip
            metrics = {name: float(v) for name, v in metrics.items()}
            state.record.update(**metrics)
            for logger in state.loggers:
                logger.log_metrics(metrics, step=self.global_step)
            for writer in tensorboard_writers(state.loggers):
                writer.add_figure("test/confusion_matrix", confusion_matrix_figure(test["confusion"][k].cpu()),
                                  self.global_step)  # fmt: skip

    @torch.no_grad()
    def _load_member(self, k: int, checkpoint: dict) -> None:
        state = {key[len("net.") :]: value for key, value in checkpoint["state_dict"].items()}
        for name, (tensor, j) in self.net.member_slots(k).items():
            if j is not None:
                tensor[j] = state[name].to(tensor.device)

    def _save_figures(self, state: _MemberState) -> None:
        for diagnostic in state.diagnostics:
            if isinstance(diagnostic, Diagnostic) and diagnostic.figures_dir is not None:
                diagnostic.figures_dir.mkdir(parents=True, exist_ok=True)
                diagnostic.save_figure(diagnostic.figures_dir)


def train_pack(members: list[Member], pack_id: str = "pack", parallel_jobs: int | None = None,
               log_file: str | None = None) -> list[dict]:  # fmt: skip
    """Train ``members`` as one pack (see :class:`PackTrainer`); members whose record says
    ``completed`` are skipped when their config asks to resume."""
    todo = [m for m in members if not (m.cfg.get("resume") and (read_record(m.output_dir) or {}).get("status")
                                       == "completed")]  # fmt: skip
    done = [read_record(m.output_dir) for m in members if m not in todo]
    if not todo:
        return done
    with _sigterm_raises():
        return done + PackTrainer(todo, pack_id, parallel_jobs, log_file).fit_and_test()


@contextlib.contextmanager
def _signals_deferred():
    """SIGTERM and SIGINT that arrive inside the block take effect when it ends. (Held by a
    Python handler: masking the main thread is not enough, the kernel may hand a process
    signal to one of torch's worker threads.)"""
    pending: list[int] = []
    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda number, frame: pending.append(number))
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            signal.raise_signal(pending[0])  # now, to the handler that was in place


class _sigterm_raises:
    """SIGTERM raises SIGTERMException inside the pack (as Lightning does for a single run)."""

    def __enter__(self):
        def handler(signum, frame):
            raise SIGTERMException()

        try:
            self.previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: leave signals alone
            self.previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


__all__ = ["Member", "PackTrainer", "pack_key", "train_pack"]
