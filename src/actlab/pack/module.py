"""A pack as a LightningModule: the stacked network of K runs, trained by Lightning's Trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from actlab.classifier import EPOCH_SUMS_KEY, STAGES, HookNameAttribute, OptimizerFactory, optimizer_and_schedule
from actlab.metrics import EpochMetrics
from actlab.pack.stacked import StackedNetwork, member_cross_entropy
from actlab.steps import GroupedSteps, clear_gradients
from actlab.tensorboard import log_confusion_matrix, tensorboard_writers

MEMBER_SUFFIX = "@member"
# where a compacted pack's own checkpoint keeps its stack (members in it, the others' weights)
PACK_STACK_KEY = "pack_stack"


MEMBER_METRICS = "member/"  # what every member's own metric name starts with; the shared ones do not


def member_prefix(k: int) -> str:
    """Where member k's metrics live among the pack's logged metrics (``member/3/val/acc``)."""
    return f"{MEMBER_METRICS}{k}/"


def member_key(key: str, k: int) -> str:
    """Member k's callback state key in a pack's checkpoint, from its key in a single run's."""
    return f"{key}{MEMBER_SUFFIX}{k}"


class PackModule(HookNameAttribute, GroupedSteps, L.LightningModule):
    """K classifiers of one architecture as one LightningModule over a StackedNetwork.

    The loss is the sum of the live members' mean cross-entropies, so each member's
    gradients are its own and one optimiser step over the stacked parameters is K separate
    steps (for elementwise optimisers). Member k logs what its single run's Classifier logs,
    under ``member/k/`` (``member/k/train/loss``, ``member/k/val/acc``, ``member/k/test/f1``,
    ...); the pack's logger routes those to member k's own loggers. A member stopped early or
    diverged leaves the live set: its loss is masked and its weights are put back after every
    optimiser step (momentum would go on moving them); from the next epoch on it is no longer
    computed at all (the pack is compacted to its live members: an epoch costs what they do).

    Members may differ in learning rate and weight decay (``member_settings``): the optimiser
    then has one parameter group per run of consecutive members with equal settings, over
    views of their rows of the stacked parameters, so each member's update (and schedule,
    from its own base rate) is the one its single run's optimiser makes.

    Args:
        net: the members' networks, stacked.
        optimizer: the members' optimiser factory (their optimiser configs are equal but for
            ``member_settings``).
        scheduler: their learning-rate schedule factory (``actlab.schedulers``), or None.
        member_settings: per member, its optimiser settings that may differ from the others'
            (``{"lr": 0.1, "weight_decay": 0.0}``); None: all equal.
        steps_per_call: optimiser steps per ``training_step`` call (:mod:`actlab.steps`), as
            the members' single runs take them.
    """

    # set every step: plain attributes, not through nn.Module's __setattr__ (see HookNameAttribute)
    plain_attributes = HookNameAttribute.plain_attributes | {"member_losses"}

    def __init__(self, net: StackedNetwork, optimizer: OptimizerFactory, scheduler: Callable | None = None,
                 member_settings: list[dict[str, Any]] | None = None, steps_per_call: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.steps_per_call = steps_per_call
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.member_settings = member_settings or [{} for _ in range(net.size)]
        if len(self.member_settings) != net.size:
            raise ValueError(f"{len(self.member_settings)} member settings for {net.size} members")
        self.runs = settings_runs(self.member_settings)
        self._present: torch.Tensor | None = None  # the members in the stack, once it is compacted
        self._grad_hooks: list = []
        self.live = [True] * net.size
        self.register_buffer("live_mask", torch.ones(net.size, dtype=torch.bool), persistent=False)
        self._stopped_before: list[int] = []  # resumed members that had stopped: frozen once restored
        # each stopped member's last step (its single run's final global step): what its loggers see after it
        self.last_steps: dict[int, int] = {}
        # and the epochs its single run completed (its test row's epoch; rows of the epoch it stopped in are before)
        self.last_epochs: dict[int, int] = {}
        self.tested = [True] * net.size  # the members the test stage reports
        self._frozen: dict[int, list[tuple[torch.Tensor, int, torch.Tensor]]] = {}
        self.member_losses: torch.Tensor | None = None
        # what each member's single run's Classifier accumulates, for all members at once
        classes = net.weights[-1].shape[1]
        self.epoch_metrics = torch.nn.ModuleDict(
            {f"{stage}_metrics": EpochMetrics(net.size, classes, keep_predictions=stage != "train") for stage in STAGES}
        )

    # -- members ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.net.size

    @torch.no_grad()
    def stop_member(self, k: int) -> None:
        """Member k takes no more steps (early stopping, divergence); once none is left, the
        whole fit stops."""
        if not self.live[k]:
            return
        self.live[k] = False
        if self._trainer is not None:
            self.last_steps.setdefault(k, self.trainer.global_step)
            self.last_epochs.setdefault(k, self.trainer.current_epoch + 1)  # it stops at this epoch's end
        self.live_mask[k] = False
        self._frozen[k] = [(v, j, v[j].clone()) for v, j in self.net.member_slots(k).values() if j is not None]
        if not any(self.live) and self._trainer is not None:
            self.trainer.should_stop = True

    def load_member_weights(self, k: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Member k's weights from a single run's state dict (``net.*`` keys)."""
        self.net.load_member_state_dict(k, {name[len("net.") :]: v for name, v in state_dict.items()
                                            if name.startswith("net.")})  # fmt: skip

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as its single run's Classifier holds them (``net.*`` keys)."""
        return {f"net.{name}": value for name, value in self.net.member_state_dict(k).items()}

    # -- steps ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def keep_stopped(self, members: dict[int, tuple[int, int]]) -> None:
        """Members that had stopped before this fit (a resumed pack), with the step each had
        stopped at and the epochs it had completed: they stay frozen."""
        self._stopped_before = list(members)
        self.last_steps.update({k: step for k, (step, _) in members.items()})
        self.last_epochs.update({k: epochs for k, (_, epochs) in members.items()})

    def member_step(self, k: int) -> int:
        """Member k's global step: the pack's, or the one it stopped at."""
        return self.last_steps.get(k, self.global_step)

    def on_fit_start(self) -> None:
        for k in self._stopped_before:  # their restored weights are the ones to keep
            self.stop_member(k)
        self._stopped_before = []

    def on_train_start(self) -> None:
        super().on_train_start()
        self._record_epoch_lr()  # a fit resumed inside an epoch gets no on_train_epoch_start

    def _record_epoch_lr(self) -> None:
        # the rate this epoch trains at (Lightning steps epoch schedules before on_train_epoch_end)
        self._epoch_lr = [torch.tensor(float(group["lr"])) for group in self.trainer.optimizers[0].param_groups]

    def on_train_epoch_start(self) -> None:
        self._record_epoch_lr()
        live = [k for k in range(self.size) if self.live[k]]
        if live and live != self.net.present:
            self.compact(live)

    @property
    def stack_rows(self) -> list[int] | None:
        """The members in the stack once it is compacted (None: every member): the pack's
        training loader draws only their batches."""
        return None if self._present is None else list(self.net.present)

    @property
    def computed(self) -> int:
        """How many members the stacked computation holds this epoch."""
        return self.net.height

    # -- compaction -------------------------------------------------------------------------

    @torch.no_grad()
    def compact(self, keep: list[int]) -> None:
        """Take the members not in ``keep`` (stopped ones) out of the stacked computation, and
        out of the optimiser: the stacked parameters shrink in place, their optimiser state
        with them, each kept member's rows and state unchanged."""
        optimizer = self.trainer.optimizers[0] if self._trainer is not None and self.trainer.optimizers else None
        parameters = list(self.parameters())
        before = {id(p): members for p, members in self.net.parameter_members()}
        layout = self.optimizer_layout()
        kept = self.net.compact(keep)
        self._frozen = {}  # every frozen member has left
        self._present = torch.tensor(self.net.present, device=self.live_mask.device)
        if optimizer is None:
            return
        if len(self.runs) == 1:  # the optimiser holds the stacked parameters themselves
            for parameter in parameters:
                state, rows = optimizer.state.get(parameter), kept.get(id(parameter))
                if state and rows is not None:
                    optimizer.state[parameter] = _rows_of(state, rows, len(before[id(parameter)]))
            return
        after = {id(p): members for p, members in self.net.parameter_members()}
        for group, old, new in zip(optimizer.param_groups, layout, self.optimizer_layout()):
            old_views = dict(zip((i for i, _, _ in old), zip(group["params"], old)))
            views = []
            for i, first, end in new:
                view, (_, old_first, old_end) = old_views[i]
                mine = before[id(parameters[i])][old_first:old_end]
                rows = torch.tensor([mine.index(k) for k in after[id(parameters[i])][first:end]])
                views.append(parameters[i].detach()[first:end])
                state = optimizer.state.pop(view, None)
                if state:
                    optimizer.state[views[-1]] = _rows_of(state, rows, len(mine))
            for view, _ in old_views.values():
                optimizer.state.pop(view, None)
            group["params"] = views
        self._link_gradients(optimizer.param_groups)

    def expand(self) -> None:
        """Every member back in the stack (with the weights it stopped with), e.g. to test all."""
        self.net.expand()
        self._present = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for logger in _pack_loggers(self.loggers if self._trainer is not None else []):
            if logger.unsaved:  # every row logged before a checkpoint is on disk
                logger.save()
        checkpoint[EPOCH_SUMS_KEY] = self.epoch_metrics["train_metrics"].sums()  # every member's, as a single run's
        if self.net.stash:  # a compacted pack: what a resume needs to rebuild the same stack
            checkpoint[PACK_STACK_KEY] = {"present": list(self.net.present), "stash": self.net.stash,
                                          "live": list(self.live), "last_steps": dict(self.last_steps),
                                          "last_epochs": dict(self.last_epochs)}  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if EPOCH_SUMS_KEY in checkpoint:  # a resumed epoch's metrics cover its batches before the checkpoint too
            self.epoch_metrics["train_metrics"].load_sums(checkpoint[EPOCH_SUMS_KEY])
        stack = checkpoint.get(PACK_STACK_KEY)
        if stack:  # before the weights are loaded and the optimiser is built: the saved stack's shape
            self.live = list(stack["live"])
            self.last_steps.update({int(k): step for k, step in stack.get("last_steps", {}).items()})
            self.last_epochs.update({int(k): epochs for k, epochs in stack.get("last_epochs", {}).items()})
            self.live_mask.copy_(torch.tensor(self.live))
            self.compact(stack["present"])  # no optimiser yet: the stack alone
            self.net.stash = {int(k): v for k, v in stack["stash"].items()}

    def _losses(self, stage: str, logits: torch.Tensor, targets: torch.Tensor,
                members: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Per-member mean losses of the members computed (``members``, default all), added to
        the stage's epoch metrics."""
        if self.net.exact:  # each member's own call, as its single run makes it
            losses = torch.stack([F.cross_entropy(mine, y) for mine, y in zip(logits.unbind(0), targets.unbind(0))])
        else:
            losses = member_cross_entropy(logits, targets).mean(1)
        self.epoch_metrics[stage + "_metrics"].update(losses, logits, targets, members)
        return losses

    def train_batch(self, batch) -> torch.Tensor:
        x, y, rows = batch  # (R, B, ...), (R, B): the own batches of members ``rows`` (ascending)
        members, net = self._present, self.net
        if members is None:
            if len(rows) != net.size:
                raise RuntimeError(f"a training batch of members {rows.tolist()} for a stack of all {net.size}")
            losses = self._losses("train", net(x), y)
            self.member_losses = losses.detach()  # the step's loss of each member (divergence checks read it)
            if all(self.live):  # the common case: no mask to apply (two operations, each a kernel launch on a GPU)
                return losses.sum()
            return torch.where(self.live_mask, losses, 0.0).sum()
        if not torch.equal(rows, members):  # the loader's epoch began before the stack last shrank
            where = torch.searchsorted(rows, members)
            if not torch.equal(rows[where.clamp(max=len(rows) - 1)], members):
                raise RuntimeError(f"a training batch of members {rows.tolist()} lacks some of {members.tolist()}")
            x, y = x.index_select(0, where), y.index_select(0, where)
        losses = self._losses("train", self.net(x), y, members)
        self.member_losses = torch.zeros(self.size, device=losses.device).index_copy_(0, members, losses.detach())
        return torch.where(self.live_mask.index_select(0, members), losses, 0.0).sum()

    def _evaluation_step(self, batch, stage: str) -> None:
        x, y = batch  # the members' common batch
        k = self.net.height
        self._losses(stage, self.net(x.unsqueeze(0).expand(k, *x.shape)), y.unsqueeze(0).expand(k, -1),
                         self._present)  # fmt: skip

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if not self._frozen:
            return
        with torch.no_grad():  # the stopped members' weights back (momentum would go on moving them)
            for slots in self._frozen.values():
                for tensor, j, value in slots:
                    tensor[j] = value

    # -- epoch metrics ----------------------------------------------------------------------

    def _log_members(self, stage: str, members: list[int], names: tuple[str, ...],
                     extra: dict[int, dict[str, torch.Tensor]] | None = None,
                     step_back: int = 0, save: bool = True) -> dict[str, torch.Tensor]:  # fmt: skip
        metrics = self.epoch_metrics[f"{stage}_metrics"].compute_and_reset()
        values = {}
        for k in members:
            prefix = member_prefix(k)
            values.update({f"{prefix}{stage}/{name}": metrics[name][k] for name in names})
            values.update({f"{prefix}{stage}/{name}": v for name, v in (extra or {}).get(k, {}).items()})
            if stage == "test":
                values.update({f"{prefix}test/acc_class_{c}": v for c, v in enumerate(metrics["class_acc"][k])})
        self._publish(values, step_back, save)
        return metrics

    def _publish(self, values: dict[str, torch.Tensor], step_back: int = 0, save: bool = True) -> None:
        """The members' epoch metrics where ``self.log`` at an epoch's end puts them: in the
        callbacks' metrics (``trainer.callback_metrics``, the dict Lightning keeps them in), and to
        the loggers with the epoch, at the step Lightning logs that stage's epoch metrics at (a
        training epoch's: its last step's, ``step_back=1``); in one host transfer, without
        Lightning's per-value bookkeeping (~0.2 ms a value on a CPU, and a pack logs ~6 values a
        member an epoch). The contract tests compare every member's CSV rows, TensorBoard scalars
        and record with its single run's, which logs through ``self.log``. ``save=False``: the
        pack's logger writes its files later (with the training epoch's metrics, or before the
        next checkpoint: :meth:`on_save_checkpoint`); other loggers now."""
        if not values:
            return
        trainer = self.trainer
        tensors = torch.stack([value.detach().float().reshape(()) for value in values.values()])
        trainer.callback_metrics.update(zip(values, tensors.unbind(0)))
        if not trainer.loggers:
            return
        scalars = {**dict(zip(values, tensors.tolist())), "epoch": trainer.current_epoch}
        step = trainer.fit_loop.epoch_loop._batches_that_stepped - step_back  # borrowed: the contract tests check it
        later = [] if save else _pack_loggers(trainer.loggers)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            if logger not in later:
                logger.save()

    def on_train_epoch_end(self) -> None:
        live = [k for k in range(self.size) if self.live[k]]
        extra = {k: {"lr": self._epoch_lr[self.group_of(k)]} for k in live}  # set at every fit's and epoch's start
        # Lightning logs a training epoch's metrics at its last step
        self._log_members("train", live, ("loss", "acc"), extra, step_back=1)
        super().on_train_epoch_end()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.epoch_metrics["val_metrics"].compute_and_reset()
            return
        # saved with the training epoch's metrics, in the epoch-end hook that follows, or before a checkpoint
        # taken in between (a pack validates once an epoch, at its end): 16 loggers a pack of 8, ~1.6 ms on a CPU
        self._log_members("val", [k for k in range(self.size) if self.live[k]], ("loss", "acc", "f1"), save=False)

    def on_test_epoch_end(self) -> None:
        members = [k for k in range(self.size) if self.tested[k]]
        metrics = self._log_members("test", members, ("loss", "acc", "f1"))
        pack_loggers = _pack_loggers(self.loggers)
        if pack_loggers:
            for k in members:
                log_confusion_matrix(tensorboard_writers(pack_loggers[0].member_loggers[k]), metrics["confusion"][k],
                                     self.member_step(k))  # fmt: skip

    # -- the optimiser ----------------------------------------------------------------------

    def group_of(self, k: int) -> int:
        """The optimiser's parameter group that steps member k."""
        return next(g for g, (start, stop) in enumerate(self.runs) if start <= k < stop)

    def optimizer_layout(self) -> list[list[tuple[int, int, int]]]:
        """Per parameter group (one per run of members with equal settings), its tensors as
        (index of the stacked parameter in ``self.parameters()``, first row, end row)."""
        index = {id(p): i for i, p in enumerate(self.parameters())}
        layout = []
        for start, stop in self.runs:
            tensors = []
            for parameter, members in self.net.parameter_members():
                rows = [j for j, k in enumerate(members) if start <= k < stop]
                if rows:  # a run of members is a run of rows in every stack (members ascend in each)
                    tensors.append((index[id(parameter)], rows[0], rows[-1] + 1))
            layout.append(sorted(tensors))
        return layout

    def _optimizer_groups(self) -> list[Any]:
        """What the optimiser factory takes: the parameters themselves when the members'
        settings are equal; else one group per run, over views of its rows, whose gradients
        are views of the stacked gradients (linked after every backward)."""
        if len(self.runs) == 1:
            return list(self.parameters())
        parameters = list(self.parameters())
        groups = [
            {"params": [parameters[i].detach()[first:end] for i, first, end in tensors], **self.member_settings[start]}
            for (start, _), tensors in zip(self.runs, self.optimizer_layout())
        ]
        self._link_gradients(groups)
        return groups

    def _link_gradients(self, groups: list[dict[str, Any]]) -> None:
        """After every backward, each view of a stacked parameter in ``groups`` gets its rows
        of that parameter's gradient as its own."""
        for handle in self._grad_hooks:
            handle.remove()
        parameters = list(self.parameters())
        views: dict[int, list[tuple[torch.Tensor, int, int]]] = {}
        for group, tensors in zip(groups, self.optimizer_layout()):
            for view, (i, first, end) in zip(group["params"], tensors):
                views.setdefault(i, []).append((view, first, end))

        def link(parameter: torch.Tensor, mine: list[tuple[torch.Tensor, int, int]]) -> None:
            for view, first, end in mine:
                view.grad = parameter.grad[first:end]

        self._grad_hooks = [parameters[i].register_post_accumulate_grad_hook(lambda p, mine=mine: link(p, mine))
                            for i, mine in views.items()]  # fmt: skip

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        clear_gradients(optimizer)
        if len(self.runs) > 1:  # the optimiser holds views: the stacked gradients are cleared here
            for parameter in self.parameters():
                parameter.grad = None

    def configure_optimizers(self) -> Any:
        return optimizer_and_schedule(self, self.optimizer_factory, self.scheduler_factory, self._optimizer_groups())


def _pack_loggers(loggers: list) -> list:
    """The pack's own loggers among ``loggers`` (:class:`~actlab.pack.loggers.PackLogger`)."""
    from actlab.pack.loggers import PackLogger  # which imports this module

    return [logger for logger in loggers if isinstance(logger, PackLogger)]


def _rows_of(state: dict[str, Any], rows: torch.Tensor, height: int) -> dict[str, Any]:
    """An optimiser state with its per-row tensors (dim 0 of size ``height``) cut to ``rows``."""
    return {key: (value.index_select(0, rows.to(value.device))
                  if torch.is_tensor(value) and value.dim() and value.shape[0] == height else value)
            for key, value in state.items()}  # fmt: skip


def settings_runs(settings: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """The maximal runs ``[start, stop)`` of consecutive members with equal settings."""
    runs: list[tuple[int, int]] = []
    for k, mine in enumerate(settings):
        if runs and settings[runs[-1][0]] == mine:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    return runs
