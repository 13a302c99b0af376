"""Training steps in groups: several optimiser steps per Lightning ``training_step`` call.

Lightning's automatic optimisation costs ~0.3 ms of Python per step on a CPU (its hooks,
progress counters, closure and result objects; more on a slow GPU host), as much as a whole step
of a small MLP's arithmetic. :class:`GroupedSteps` pays it once per group: each
``training_step`` call draws up to ``steps_per_call`` batches from Lightning's data iterator
and, for each, does exactly what automatic optimisation does for one: the
``on_before_zero_grad`` hooks and the module's ``optimizer_zero_grad``, backward through
Lightning's ``manual_backward`` (its backward hooks), the module's ``optimizer_step`` through
Lightning's optimiser wrapper (its ``on_before_optimizer_step`` hooks; ``global_step`` counts
steps), then the step-interval learning-rate schedules. Lightning's batch progress and logging
step are kept counting batches after every step. Where Lightning's backward and optimiser-step
wrappers would do nothing but call those hooks (one device, no gradient scaler, no profiler:
:func:`steps_only_call_hooks`), the step calls them itself, only on the callbacks that have them
and the module's own only where it overrides one (Lightning calls every callback's and the
module's no-ops, each under a profiler context: ~0.03 ms a step of a single run on a CPU);
elsewhere every step hook goes through Lightning's own hook calls, which a profiler times. So do
torch's own per-call layers around the optimiser's ``step`` and ``zero_grad`` (a profiler record,
step hooks, a grad-mode switch with compiler guards): where none of them would do anything (no
step hook registered, no profiler recording) the step calls the optimiser's own ``step`` with
gradients off (:func:`plain_step`) and sets the gradients to None (:func:`clear_gradients`), as
torch's layers do (5-7 % of a pack of 8 tiny MLPs' epoch on a CPU, measured). The
batch hooks (``on_train_batch_start``/``_end``) run once per call, with the call's last batch: a
callback that acts on them (other than a progress bar, a time limit, actlab's divergence check,
its requeue guard or an epoch-end checkpoint) keeps one step per call. The numbers are the ones
one step per call gives, bit for bit (tests/test_steps.py compares records, checkpoints and
logged steps). One difference, in the checkpoint: a ReduceLROnPlateau schedule steps before the
epoch's checkpoint is written, where Lightning's automatic optimisation steps it after (its
checkpoint holds the schedule one step behind, and a run resumed from it goes on one step behind).

A setting that works per Lightning step (gradient accumulation or clipping, validation or a
checkpoint every N training steps) keeps the run on Lightning's automatic optimisation, with the
ordinary ``training_step(batch, batch_idx)``, and says so in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.data import has_len
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, Timer
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.trainer import call
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.optimizer import (
    Optimizer,
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
    _use_grad_for_differentiable,
)

from actlab.callbacks.divergence import DivergenceMonitor
from actlab.callbacks.requeue import RequeueGuard
from actlab.errors import ConfigError

log = logging.getLogger(__name__)


# callbacks whose batch hooks mean the same once per call: they read the progress, not each step
PER_CALL_CALLBACKS = (ProgressBar, Timer, DivergenceMonitor, RequeueGuard)
# the hooks of a training step's zero_grad, backward and optimiser step (callbacks' and the module's)
STEP_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
# what Lightning's precision plugin does in a backward and an optimiser step: Precision's own only call hooks
PRECISION_STEP_METHODS = ("pre_backward", "backward", "post_backward", "optimizer_step", "_wrap_closure",
                          "_after_closure", "_clip_gradients")  # fmt: skip


def grouping_refusal(trainer: L.Trainer) -> str | None:
    """Why ``trainer``'s settings need one optimiser step per ``training_step`` call (None: they do not)."""
    if trainer.accumulate_grad_batches != 1:
        return "trainer.accumulate_grad_batches accumulates per Lightning step"
    if trainer.gradient_clip_val:
        return "trainer.gradient_clip_val clips per Lightning step"
    interval = trainer.val_check_interval
    if not (isinstance(interval, float) and interval == 1.0):  # an int counts batches: 1 validates after each
        return "trainer.val_check_interval counts Lightning steps"
    for callback in trainer.callbacks:
        name = type(callback).__name__
        if isinstance(callback, ModelCheckpoint):  # borrowed settings: tests/test_steps.py reads them too
            if callback._every_n_train_steps or callback._train_time_interval:
                return f"a {name} every N training steps or some time counts Lightning steps"
        elif isinstance(callback, LearningRateMonitor):
            if callback.logging_interval != "epoch":
                return f"{name} logs the rate per Lightning step (logging_interval=epoch does not)"
        elif not isinstance(callback, PER_CALL_CALLBACKS) and any(
            is_overridden(hook, callback, L.Callback) for hook in ("on_train_batch_start", "on_train_batch_end")
        ):
            return f"callback {name} acts on every Lightning step (on_train_batch_start/end)"
    return None


def batches_need_no_preparation(trainer: L.Trainer) -> bool:
    """Whether Lightning's preparation of a batch already on the device is a no-op for this
    fit: no batch hook overridden (module or DataModule), precision's input conversion the
    identity (not 64-true or a half-precision ``*-true``)."""
    owners = [trainer.lightning_module, trainer.datamodule]
    hooks = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
    if any(owner is not None and is_overridden(hook, owner) for owner in owners for hook in hooks):
        return False
    return type(trainer.precision_plugin).convert_input is Precision.convert_input


def steps_only_call_hooks(trainer: L.Trainer) -> bool:
    """Whether Lightning's backward and optimiser step do nothing for this fit but call the step
    hooks around ``loss.backward()`` and ``optimizer.step()``: one device, a precision plugin
    that is Precision's own in these (32-true, 64-true, the ``*-true`` half precisions; not
    mixed precision's gradient scaler) and no profiler (which times every hook call)."""
    plugin = type(trainer.precision_plugin)
    return (type(trainer.strategy) is SingleDeviceStrategy and isinstance(trainer.profiler, PassThroughProfiler)
            and all(getattr(plugin, name) is getattr(Precision, name) for name in PRECISION_STEP_METHODS))  # fmt: skip


def _count_batches(counts: tuple, n: int) -> None:
    """Lightning's ``_BatchProgress.increment_by(n)`` (``is_last_batch`` as it is) on its total and
    current counts, field by field: its eight calls cost ~3 us a step."""
    for count in counts:
        count.ready += n
        count.started += n
        count.processed += n
        count.completed += n


# torch's per-call layers around an optimiser class's own ``step`` (borrowed: tests/test_steps.py checks both are
# found on torch's optimisers): its profiler record and step hooks, and its grad mode; each layer told by its code
TORCH_STEP_LAYERS = (Optimizer.profile_hook_step(lambda self: None).__code__,
                     _use_grad_for_differentiable(lambda self: None).__code__)  # fmt: skip
_own_steps: dict[type, tuple[Any, Any, bool]] = {}  # per class: its step as found, unwrapped, its grad-mode layer


def _own_step(cls: type) -> tuple[Any, bool]:
    """``cls.step`` without torch's layers (:data:`TORCH_STEP_LAYERS`), and whether its grad-mode
    layer (which turns gradients off around the step) was one of them. Worked out again when the
    class's ``step`` is replaced."""
    found = _own_steps.get(cls)
    if found is None or found[0] is not cls.step:
        step, grad_mode = cls.step, False
        while getattr(step, "__code__", None) in TORCH_STEP_LAYERS:
            grad_mode |= step.__code__ is TORCH_STEP_LAYERS[1]
            step = step.__wrapped__
        found = _own_steps[cls] = cls.step, step, grad_mode
    return found[1], found[2]


def steps_plainly(optimizer: Optimizer) -> bool:
    """Whether torch's per-call layers around ``optimizer.step()`` would do nothing but cost time
    (:func:`plain_step` may step it): no step hook registered (the optimiser's or global), no
    profiler recording in this thread, not a differentiable optimiser, and ``step`` not replaced on
    this optimiser, but by a learning-rate schedule's wrapper around the class's own (which only
    notes that it has stepped). A tracer that does not record through the thread's profiler (an
    execution-trace observer, on-demand tracing) sees no ``Optimizer.step#...`` range where
    this holds."""
    if (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks or _global_optimizer_pre_hooks
            or _global_optimizer_post_hooks or optimizer.defaults.get("differentiable")
            or torch._C._autograd._profiler_enabled()):  # fmt: skip
        return False
    replaced = optimizer.__dict__.get("step")
    return replaced is None or (getattr(replaced, "_wrapped_by_lr_sched", False)
                                and getattr(replaced, "__wrapped__", None) is type(optimizer).step)  # fmt: skip


def plain_step(optimizer: Optimizer) -> None:
    """``optimizer.step()`` where :func:`steps_plainly`: the optimiser's own step, with gradients
    off where torch's grad-mode layer turns them off, without the profiler record, the hook
    dispatch and the grad-mode layer's compiler guards (~10 us a step of a pack of 8 tiny MLPs
    on a CPU)."""
    if "step" in optimizer.__dict__:  # a schedule's wrapper: what it does
        optimizer._opt_called = True
    step, grad_mode = _own_step(type(optimizer))
    if not grad_mode:
        step(optimizer)
        return
    previous = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)
    try:
        step(optimizer)
    finally:
        torch._C._set_grad_enabled(previous)


def clear_gradients(optimizer: Optimizer) -> None:
    """``optimizer.zero_grad()`` (gradients set to None), without its profiler record and
    compiler guard (~13 us a step of a pack of 8 tiny MLPs on a CPU), where ``zero_grad`` is
    torch's own (not replaced on the class or the optimiser) and no profiler records."""
    if (type(optimizer).zero_grad is not Optimizer.zero_grad or "zero_grad" in optimizer.__dict__
            or torch._C._autograd._profiler_enabled()):  # fmt: skip
        optimizer.zero_grad()
        return
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = None


class DirectOptimizer:
    """The optimiser a module's ``optimizer_step`` hook steps in grouped steps where Lightning's
    wrapper would only call hooks (:func:`steps_only_call_hooks`): the same step count, the
    closure, then the ``on_before_optimizer_step`` hooks (callbacks', then the module's), inside
    the optimiser's own ``step`` as Lightning's precision plugin calls them; only the callbacks
    that have the hook are called (Lightning calls every callback's, most of them no-ops, each
    under a profiler context: ~10 us a hook a step). Without a closure, where
    :func:`steps_plainly`, the hooks come first and then :func:`plain_step`. Anything else is the
    LightningOptimizer's."""

    def __init__(self, wrapped: LightningOptimizer, module: GroupedSteps) -> None:
        self.wrapped, self.module = wrapped, module

    def step(self, closure: Any = None, **kwargs: Any) -> Any:
        wrapped, optimizer = self.wrapped, self.wrapped.optimizer

        def closure_then_hooks() -> Any:
            result = closure() if closure is not None else None
            self.module._call_step_hook("on_before_optimizer_step", optimizer)
            return result

        wrapped._on_before_step()  # the fit's step count (Lightning's manual loop sets it for each call)
        if closure is None and not kwargs and steps_plainly(optimizer):  # the hooks where the closure's call was
            self.module._call_step_hook("on_before_optimizer_step", optimizer)
            # asked again: a hook may have registered a torch step hook or started a profiler (torch's path then)
            output = plain_step(optimizer) if steps_plainly(optimizer) else optimizer.step()
        else:
            output = optimizer.step(closure=closure_then_hooks, **kwargs)
        wrapped._on_after_step()
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class GroupedSteps:
    """Mixin for a LightningModule whose :meth:`train_batch` gives one training batch's loss:
    its ``training_step`` takes up to ``steps_per_call`` optimiser steps (see the module
    docstring). Set ``steps_per_call`` before the fit; 1 is Lightning's automatic optimisation."""

    steps_per_call: int = 1
    _plain_batches = False  # batches on the device need no preparation (set for each fit)
    _direct = False  # Lightning's backward and optimiser step would only call hooks: called directly (each fit)
    # per step hook, the callbacks that have it and whether the module has its own, as the fit starts (a
    # callback or a hook set on the module later is not seen): a hook that nothing has is not called at all
    # (~2 us a hook a step of Python, with the hook name set around it)
    _step_hooks: dict[str, tuple[list[L.Callback], bool]] = {}
    _own_backward = True  # the module overrides LightningModule.backward (each fit)
    _own_zero_grad = True  # the module overrides LightningModule.optimizer_zero_grad (each fit)
    _finished_epoch = -1  # the last epoch whose last batch was trained (a plateau schedule steps after it)
    _monitors: dict[int, tuple[str, bool]] = {}  # per plateau schedule (by id): what it monitors, strictly or not

    def lr_schedule(self, schedule: dict[str, Any]) -> dict[str, Any]:
        """``configure_optimizers``' schedule dict as the fit steps it: under manual
        optimisation Lightning drops a plateau schedule's ``monitor``, kept here."""
        if self.automatic_optimization or not isinstance(schedule["scheduler"], ReduceLROnPlateau):
            return schedule
        if schedule.get("interval", "epoch") != "epoch":
            raise ValueError("a ReduceLROnPlateau schedule steps once an epoch with train_steps_per_call > 1; "
                             "set train_steps_per_call=1 for Lightning's own stepping")  # fmt: skip
        watched = (schedule["monitor"], schedule.get("strict", True))
        self._monitors = {**self._monitors, id(schedule["scheduler"]): watched}
        return {key: value for key, value in schedule.items() if key not in ("monitor", "strict", "reduce_on_plateau")}

    def train_batch(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        reason = grouping_refusal(self.trainer) if self.steps_per_call > 1 else "one step per call asked for"
        if reason and self.steps_per_call > 1:
            log.info("one training step per Lightning call (train_steps_per_call=%d not applied): %s",
                     self.steps_per_call, reason)  # fmt: skip
        self.automatic_optimization = reason is not None
        if reason:  # Lightning's own loop: batches prepared and counted by it, as for any LightningModule
            self.training_step = self.one_step
            return
        self.__dict__.pop("training_step", None)  # the grouped step, drawing its own batches
        self._plain_batches = batches_need_no_preparation(self.trainer)
        self._direct = steps_only_call_hooks(self.trainer)

    def one_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The ``training_step`` of one step per call (Lightning's automatic optimisation)."""
        return self.train_batch(batch)

    def on_train_start(self) -> None:
        if not self.automatic_optimization and not has_len(self.trainer.train_dataloader):
            raise ConfigError("the training loader has no length: actlab's training step draws its own batches "
                              "(src/actlab/steps.py) and needs len() to know where an epoch ends")  # fmt: skip
        self._step_hooks = {hook: ([c for c in self.trainer.callbacks if is_overridden(hook, c, L.Callback)],
                                   is_overridden(hook, self, L.LightningModule)) for hook in STEP_HOOKS}  # fmt: skip
        self._own_backward = is_overridden("backward", self, L.LightningModule)
        self._own_zero_grad = is_overridden("optimizer_zero_grad", self, L.LightningModule)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A fit resumed from a checkpoint written in the other mode (its settings changed, e.g.
        ``train_steps_per_call`` or accumulation) counts its steps on from there: Lightning keeps
        automatic and manual optimisation's step counts apart, and ``global_step`` reads the
        fit's own. Carried over in the checkpoint before Lightning restores its loops from it, so
        ``global_step`` is right from the first hook on (a diagnostic measuring "at init" where it
        reads 0 would measure again). Borrowed loop state: tests/test_steps.py resumes across modes."""
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        automatic = loops.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
        manual = loops.get("epoch_loop.manual_optimization.optim_step_progress")
        if automatic is None or manual is None:
            return
        mine, other = (automatic["total"], manual["total"]) if self.automatic_optimization else \
            (manual["total"], automatic["total"])  # fmt: skip
        if mine["completed"] == 0 and other["completed"] > 0:
            mine["ready"], mine["completed"] = other["ready"], other["completed"]
            other["ready"] = other["completed"] = 0

    def _batch_on_device(self, batch: Any) -> Any:
        """What Lightning's loop makes of a batch before ``training_step`` (with
        ``dataloader_iter`` the step's own task): precision's input conversion, the batch hooks,
        the transfer to the device; nothing for a tuple of tensors already on the device where
        none of these does anything (actlab's in-memory datasets: ~30 us a step saved)."""
        if self._plain_batches and isinstance(batch, tuple):
            device = self.device
            for t in batch:
                if not (isinstance(t, torch.Tensor) and t.device == device):
                    break
            else:
                return batch
        trainer = self.trainer
        batch = trainer.precision_plugin.convert_input(batch)
        batch = self._on_before_batch_transfer(batch, dataloader_idx=0)
        return trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    def _call_step_hook(self, hook: str, *args: Any) -> None:
        """``hook`` of the callbacks that have it, then the module's, as Lightning calls them
        (the hook's name is the module's ``_current_fx_name`` meanwhile, for ``self.log``); the
        module's own only where it overrides LightningModule's no-op."""
        callbacks, own = self._step_hooks[hook]
        if not (callbacks or own):
            return
        previous = self._current_fx_name
        self._current_fx_name = hook
        for callback in callbacks:
            getattr(callback, hook)(self.trainer, self, *args)
        if own:
            getattr(self, hook)(*args)
        self._current_fx_name = previous

    def _zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """The ``on_before_zero_grad`` hooks and the module's ``optimizer_zero_grad``: directly,
        or with :attr:`_direct` off through Lightning's hook calls (a profiler times each)."""
        if self._direct:
            self._call_step_hook("on_before_zero_grad", optimizer)
            if self._own_zero_grad:
                self.optimizer_zero_grad(epoch, batch_idx, optimizer)
            else:  # LightningModule's: optimizer.zero_grad()
                clear_gradients(optimizer)
            return
        trainer = self.trainer  # Lightning's own hook calls (borrowed: tests/test_steps.py profiles them)
        call._call_callback_hooks(trainer, "on_before_zero_grad", optimizer)
        call._call_lightning_module_hook(trainer, "on_before_zero_grad", optimizer)
        call._call_lightning_module_hook(trainer, "optimizer_zero_grad", epoch, batch_idx, optimizer)

    def _optimizer_step(self, epoch: int, batch_idx: int, optimizer: LightningOptimizer | DirectOptimizer) -> None:
        """The module's ``optimizer_step`` hook: directly, stepping a :class:`DirectOptimizer`,
        or through Lightning's hook call with its own optimiser wrapper."""
        if isinstance(optimizer, DirectOptimizer):
            self.optimizer_step(epoch, batch_idx, optimizer)
        else:
            call._call_lightning_module_hook(self.trainer, "optimizer_step", epoch, batch_idx, optimizer)

    def _backward(self, loss: torch.Tensor) -> None:
        """``manual_backward``, or with :attr:`_direct` what it amounts to: the backward hooks
        around the module's ``backward``."""
        if not self._direct:
            self.manual_backward(loss)
            return
        self._call_step_hook("on_before_backward", loss)
        if self._own_backward:
            self._current_fx_name, previous = "backward", self._current_fx_name
            self.backward(loss)
            self._current_fx_name = previous
        else:  # what LightningModule.backward does under a Trainer
            loss.backward()
        self._call_step_hook("on_after_backward")

    def training_step(self, dataloader_iter: Iterator) -> torch.Tensor:
        trainer, optimizer = self.trainer, self.optimizers()
        stepped = DirectOptimizer(optimizer, self) if self._direct else optimizer
        epoch, loop = trainer.current_epoch, trainer.fit_loop.epoch_loop
        progress = loop.batch_progress  # borrowed loop state: tests/test_steps.py fails the day it changes
        fetcher = getattr(dataloader_iter, "data_fetcher", None)  # borrowed: Lightning's, which keeps the last batch
        max_steps = trainer.max_steps  # -1: none
        counts = (progress.total, progress.current)
        # the schedules as Lightning reads them, once a call (a callback may add one during the fit)
        stepwise = any(config.interval == "step" for config in trainer.lr_scheduler_configs)
        taken = 0
        while True:
            if taken and fetcher is not None:
                # the last batch let go before the next is drawn (Lightning reads the call's last one after it): the
                # next is gathered into its memory, still in cache (~25 us a step of a pack of 8 tiny MLPs on a CPU;
                # a call's first draw still has the previous call's last batch held by Lightning's loop)
                fetcher._batch = None
            batch, batch_idx, _ = next(dataloader_iter)
            loss = self.train_batch(self._batch_on_device(batch))
            del batch
            self._zero_grad(epoch, batch_idx, optimizer.optimizer)
            self._backward(loss)
            self._optimizer_step(epoch, batch_idx, stepped)
            if stepwise:
                self._step_schedules("step", batch_idx)
            # each step counted as it completes, as Lightning counts one (its own count of the call, at its end,
            # taken back below): a checkpoint taken in a signal handler mid-group resumes there
            _count_batches(counts, 1)
            loop._batches_that_stepped += taken > 0  # the logging step: the batches before the call's last
            taken += 1
            if dataloader_iter.done:  # the epoch's last batch: epoch schedules step before validation, as Lightning's
                self._step_schedules("epoch", epoch)
                self._finished_epoch = epoch
                break
            if taken == self.steps_per_call or trainer.should_stop or 0 <= max_steps <= trainer.global_step:
                break
        _count_batches(counts, -1)
        return loss.detach()

    def _step_schedules(self, interval: str, index: int, plateau: bool = False) -> None:
        """Lightning's ``_update_learning_rates`` for ``interval`` (its non-plateau schedules, or
        with ``plateau`` its ReduceLROnPlateau ones, given their monitored value)."""
        for config in self.trainer.lr_scheduler_configs:
            on_plateau = isinstance(config.scheduler, ReduceLROnPlateau)
            if config.interval != interval or on_plateau != plateau or (index + 1) % config.frequency:
                continue
            value = None
            if plateau:
                monitor, strict = self._monitors[id(config.scheduler)]
                value = self.trainer.callback_metrics.get(monitor)
                if value is None:
                    if strict:
                        raise RuntimeError(f"ReduceLROnPlateau monitors {monitor!r}, which is not logged; "
                                           f"logged: {sorted(self.trainer.callback_metrics)}")  # fmt: skip
                    continue
            self.lr_scheduler_step(config.scheduler, value)

    def on_train_epoch_end(self) -> None:
        epoch = self.trainer.current_epoch
        if not self.automatic_optimization and self._finished_epoch == epoch:  # after validation, as Lightning's
            self._step_schedules("epoch", epoch, plateau=True)
