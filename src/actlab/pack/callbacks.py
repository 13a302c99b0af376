"""What a pack does per member, as callbacks on Lightning's public hooks: each member's
history and record, its checkpoints, its early stopping, its divergence, its diagnostics.

A member's callback saves its state under its own key (``<single-run key>@member<k>``), so
one checkpoint of the pack holds every member's; :mod:`actlab.pack.checkpoint` renames them
back for each member's own checkpoint file.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from copy import deepcopy

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint

from actlab.callbacks import (
    ActivationPlot,
    DeadNeuronMonitor,
    GradientFlow,
    GradientHistograms,
    LayerOutputHistograms,
    RateHalving,
    surviving_rates,
)
from actlab.callbacks.diagnostic import Diagnostic, DiagnosticSchedule, eval_mode
from actlab.callbacks.divergence import DivergenceMonitor, divergence
from actlab.callbacks.requeue import requeue_signals_deferred
from actlab.callbacks.run_history import RunHistory
from actlab.errors import DivergedError
from actlab.pack.diagnostics import layer_names, member_layer_outputs, member_weight_gradients, scan_members
from actlab.pack.loggers import PackLogger
from actlab.pack.module import MEMBER_METRICS, PackModule, member_key, member_prefix
from actlab.record import RunRecord

log = logging.getLogger(__name__)


class MemberCallback:
    """Mixin: the callback of pack member ``member`` standing for ``single_run_class`` in
    its single run, with a state key of its own: the single run's, ``@member<k>``."""

    member: int
    single_run_class: type

    @functools.cached_property
    def state_key(self) -> str:  # Lightning reads it at every hook call: built once
        key = super().state_key.replace(type(self).__qualname__, self.single_run_class.__qualname__, 1)
        return member_key(key.replace(member_prefix(self.member), ""), self.member)


class PackClock:
    """The times of a pack's epoch starts and ends, each taken once, by the first member's
    history to ask: every member's epoch is the pack's (the histories write their records one
    after another at an epoch's end, and a member's epoch must not count the records written
    before its own)."""

    def __init__(self) -> None:
        self._times: dict[str, tuple[int, float]] = {}

    def time(self, event: str, epoch: int) -> float:
        """When ``event`` happened in ``epoch``: now, the first time it is asked for."""
        if self._times.get(event, (None,))[0] != epoch:
            self._times[event] = (epoch, time.perf_counter())
        return self._times[event][1]


class MemberHistory(MemberCallback, RunHistory):
    """A member's :class:`~actlab.callbacks.RunHistory`: its ``member/k/`` metrics, its
    epochs until it stops, its diagnostics' time, written into its record every epoch; its
    epoch times from the pack's ``clock`` (shared by its members' histories)."""

    single_run_class = RunHistory

    def __init__(self, member: int, record: RunRecord, diagnostics: list[Diagnostic],
                 clock: PackClock | None = None) -> None:  # fmt: skip
        super().__init__(record, log_epochs=False, diagnostics=diagnostics)
        self.member = member
        self.clock = clock or PackClock()
        # the pack's epoch divided by the members it computed: this member's share of it
        self.member_epoch_times: list[float] = []

    def epoch_metrics(self, trainer: L.Trainer) -> dict[str, float]:
        prefix = member_prefix(self.member)
        return {k[len(prefix) :]: float(v) for k, v in trainer.callback_metrics.items()
                if k.startswith(prefix) and k[len(prefix) :].startswith(("train/", "val/"))}  # fmt: skip

    def _clock(self, event: str, trainer: L.Trainer) -> float:
        return self.clock.time(event, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: PackModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self.member_epoch_times.append(self.epoch_times[-1] / max(1, pl_module.computed))
        # MemberCallbacks runs after the module has logged the epoch (a single run's history waits
        # for the next epoch's start): collected now, so the epoch a member stops in is its own
        self._collect(trainer)

    def _loggers(self, trainer: L.Trainer | None) -> list:
        """The member's own loggers (those the pack's logger routes its metrics to)."""
        loggers = trainer.loggers if trainer is not None else []
        packs = [logger for logger in loggers if isinstance(logger, PackLogger)]
        return list(packs[0].member_loggers[self.member]) if packs else []

    def record_fields(self, trainer: L.Trainer | None) -> dict:
        times = self.member_epoch_times
        return {**super().record_fields(trainer), "epoch_times_per_member_s": times,
                "epoch_time_per_member_s": statistics.median(times) if times else None}  # fmt: skip

    def state_dict(self) -> dict:
        return {**super().state_dict(), "member_epoch_times": self.member_epoch_times}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.member_epoch_times = list(state_dict.get("member_epoch_times", []))


class MemberModelCheckpoint(MemberCallback, ModelCheckpoint):
    """A member's ModelCheckpoint (its configured settings; ``monitor`` read from its own
    metrics). It saves while the member trains, the epoch it stops in included: once the member
    has stopped, :class:`MemberCallbacks` gives it no more hooks."""

    single_run_class = ModelCheckpoint
    members: MemberCallbacks | None = None  # the pack's member callbacks, which hold this one

    def __init__(self, member: int, monitor: str | None = None, **kwargs) -> None:
        self.member = member
        super().__init__(monitor=f"{member_prefix(member)}{monitor}" if monitor else None, **kwargs)

    def _monitor_candidates(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        """Lightning's candidates (a copy of the logged metrics, ``epoch`` and ``step`` as ints) of
        this member's metrics and the shared ones only: the pack's hold every member's, and every
        member's checkpoints copying all of them cost K² copies an epoch. A tensor is copied by
        ``clone`` (``deepcopy``, Lightning's, costs ~10 us a tensor: ~2 ms an epoch of a pack of 8's
        checkpoints)."""
        prefix = member_prefix(self.member)
        candidates = {key: value.detach().clone() if isinstance(value, torch.Tensor) else deepcopy(value)
                      for key, value in trainer.callback_metrics.items()
                      if key.startswith(prefix) or not key.startswith(MEMBER_METRICS)}  # fmt: skip
        epoch, step = candidates.get("epoch"), candidates.get("step")
        candidates["epoch"] = epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
        candidates["step"] = step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Lightning's save, of a checkpoint holding this member's callback states alone (its
        file keeps no other member's: :func:`~actlab.pack.checkpoint.member_checkpoint`), so a
        member's checkpoint costs the same in a pack of any size."""
        if self.members is None:
            super()._save_checkpoint(trainer, filepath)
            return
        # SLURM's requeue signal meanwhile would save the pack's own checkpoint from its handler, with this
        # member's states alone: it waits until this save is done
        with requeue_signals_deferred():
            self.members.saving = self.member
            try:
                super()._save_checkpoint(trainer, filepath)
            finally:
                self.members.saving = None

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None) -> str:
        # the member's metric names, as in its single run's checkpoint names
        mine = {k[len(member_prefix(self.member)) :]: v for k, v in metrics.items()
                if k.startswith(member_prefix(self.member))}  # fmt: skip
        return super().format_checkpoint_name({**metrics, **mine}, filename, ver, prefix)


class MemberEarlyStopping(MemberCallback, EarlyStopping):
    """Lightning's EarlyStopping rule on a member's own metric: once it has not improved for
    ``patience`` checks, that member stops (the pack stops once every member has).

    Lightning's own check stops the whole Trainer; this one stops the member. It is the one
    place a pack borrows Lightning's private API: the check EarlyStopping's public hooks call
    (``_run_early_stopping_check``) and the rule it applies (``_evaluate_stopping_criteria``),
    pinned by ``tests/test_pack.py::test_the_lightning_internals_a_pack_borrows_are_still_there``."""

    single_run_class = EarlyStopping

    def __init__(self, member: int, monitor: str, **kwargs) -> None:
        self.member = member
        self.halving: PackRateHalving | None = None  # the pack's rate halving, where it has one
        self.halved_epoch: int | None = None  # the epoch rate halving stopped this member at
        super().__init__(monitor=f"{member_prefix(member)}{monitor}", **kwargs)

    def state_dict(self) -> dict:
        state = super().state_dict()
        return state if self.halved_epoch is None else {**state, "halved_epoch": self.halved_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.halved_epoch = state_dict.get("halved_epoch")

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        module = trainer.lightning_module
        if self.monitor not in trainer.callback_metrics:  # a member's metrics exist while it trains
            return
        why = self.halving.verdict(trainer, self.member) if self.halving is not None else None
        if why is not None:
            self.halved_epoch = trainer.current_epoch
            module.stop_member(self.member)
            log.info("pack member %d stopped by rate halving after epoch %d: %s", self.member,
                     trainer.current_epoch + 1, why)  # fmt: skip
            return
        should_stop, _ = self._evaluate_stopping_criteria(trainer.callback_metrics[self.monitor].squeeze())
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            module.stop_member(self.member)
            log.info("pack member %d stopped early at epoch %d", self.member, trainer.current_epoch)


class PackRateHalving:
    """:class:`~actlab.callbacks.RateHalving` applied to a pack: after ``after_epochs`` epochs
    the members are grouped by activation (and weight decay), each group's rates compared by
    :func:`~actlab.callbacks.surviving_rates` over their seeds' best validation accuracy so far
    (a diverged seed counts 0, as in the rate choice), and the members of the rates that trail
    stop through their early stopping (so a resumed pack keeps them stopped).

    Fail-closed: a group is compared only when the pack holds every job of the sweep in it
    (``complete``: the launcher keeps such groups in one pack); any other group trains its
    full budget."""

    def __init__(self, rule: RateHalving, groups: list[str | None], rates: list[float],
                 stoppers: dict[int, EarlyStopping], complete: set[str | None]) -> None:  # fmt: skip
        self.rule, self.groups, self.rates, self.stoppers = rule, groups, rates, stoppers
        self.complete = complete
        self._verdicts: dict[int, dict[int, str]] = {}

    def verdict(self, trainer: L.Trainer, k: int) -> str | None:
        """Why member ``k`` stops at this epoch's end (None: it goes on)."""
        epoch = trainer.current_epoch
        if epoch != self.rule.after_epochs - 1:
            return None
        if epoch not in self._verdicts:
            self._verdicts = {epoch: self._decide(trainer)}
        return self._verdicts[epoch].get(k)

    def _score(self, trainer: L.Trainer, j: int) -> float:
        module = trainer.lightning_module
        metric = trainer.callback_metrics.get(f"{member_prefix(j)}val/acc")
        if not module.live[j] or metric is None:  # diverged (or stopped): 0, as the rate choice counts it
            return 0.0
        stopper = self.stoppers.get(j)
        best = stopper.best_score if stopper is not None and stopper.monitor.endswith("val/acc") else None
        values = [float(metric)] + ([float(best)] if best is not None and torch.isfinite(best) else [])
        return max(values)  # the best so far (the stopper's best may already hold this epoch's)

    def _decide(self, trainer: L.Trainer) -> dict[int, str]:
        verdicts = {}
        for group in set(self.groups):
            members = [j for j, g in enumerate(self.groups) if g == group]
            if group not in self.complete or len({self.rates[j] for j in members}) < 2:
                continue
            scores: dict[float, list[float]] = {}
            for j in members:
                scores.setdefault(self.rates[j], []).append(self._score(trainer, j))
            margin = self.rule.margin
            kept = surviving_rates(scores, margin)
            means = {rate: statistics.fmean(values) for rate, values in scores.items()}
            best = max(means, key=means.get)
            for j in members:
                if self.rates[j] not in kept and trainer.lightning_module.live[j]:
                    gap = 100 * (means[best] - means[self.rates[j]])
                    verdicts[j] = f"lr {self.rates[j]:g} trails lr {best:g} by {gap:.2f} points (margin {margin:g})"
        return verdicts


class MemberCallbacks(Checkpoint):
    """Every member's own callbacks (history, checkpoints, early stopping) behind one
    Lightning callback, which forwards them the epoch-level hooks: Lightning calls every hook
    of every callback at every step, so K members' callbacks registered one by one would cost
    per step in proportion to K. It is a Checkpoint, so Lightning calls its epoch-end hooks
    after the module has logged the epoch's metrics, as it calls a single run's
    ModelCheckpoint and EarlyStopping. Its state is every member's, each under its own key.

    A hook goes to the callbacks of the members training when it starts: a member stopped
    early gets the rest of the epoch it stopped in (its checkpoints at that epoch, as its single
    run saves them) and nothing after; a diverged member nothing after the step it diverged at
    (its single run ended there)."""

    FORWARDED = (
        "setup", "teardown", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start",
        "on_train_epoch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
        "on_validation_epoch_end", "on_test_start", "on_test_end", "on_exception", "on_sanity_check_start",
        "on_sanity_check_end",
    )  # fmt: skip

    def __init__(self, callbacks: list[L.Callback]) -> None:
        self.callbacks = callbacks
        self.saving: int | None = None  # the member whose own checkpoint is being written, if any
        for callback in callbacks:
            if isinstance(callback, MemberModelCheckpoint):
                callback.members = self

    def state_dict(self) -> dict:
        """Every member's callback states; while member k's own checkpoint is written, k's alone."""
        return {c.state_key: c.state_dict() for c in self.callbacks if self.saving in (None, c.member)}

    def load_state_dict(self, state_dict: dict) -> None:
        for callback in self.callbacks:
            if callback.state_key in state_dict:
                callback.load_state_dict(state_dict[callback.state_key])


def _forward(hook: str):
    def forward(self, trainer: L.Trainer, *args, **kwargs) -> None:
        live = list(trainer.lightning_module.live)  # as the hook starts: a member stopping in it still gets it
        for callback in self.callbacks:
            if live[callback.member]:
                getattr(callback, hook)(trainer, *args, **kwargs)

    forward.__name__ = hook
    return forward


for _hook in MemberCallbacks.FORWARDED:
    setattr(MemberCallbacks, _hook, _forward(_hook))


# the member callbacks a pack's checkpoint keeps per member, by the single-run class each stands for
MEMBER_CALLBACK_CLASSES = (MemberHistory, MemberModelCheckpoint, MemberEarlyStopping)


class MemberDivergence(DivergenceMonitor):
    """A member whose training loss is no longer finite is recorded ``diverged`` and stops;
    the others go on. Checked when :class:`~actlab.callbacks.DivergenceMonitor` checks a
    single run's loss, on every member's loss at once (one host sync)."""

    def __init__(self, records: list[RunRecord], check_every_n_steps: int = 50) -> None:
        super().__init__(check_every_n_steps)
        self.records = records

    def step_loss(self, outputs, pl_module: PackModule) -> torch.Tensor | None:
        return pl_module.member_losses

    def diverged(self, trainer: L.Trainer, pl_module: PackModule, losses: torch.Tensor) -> None:
        for k in ((~torch.isfinite(losses)) & pl_module.live_mask).nonzero().flatten().tolist():
            error = divergence(trainer, float(losses[k]))
            log.warning("pack member %d (%s) diverged: %s", k, self.records[k].output_dir.name, error)
            pl_module.stop_member(k)
            pl_module.tested[k] = False
            self.records[k].__exit__(DivergedError, error, None)


class MemberDiagnostics(DiagnosticSchedule):
    """Every member's diagnostics (its own instances, built from its config, logging to its
    own loggers), on the single run's schedule: gradients, layer outputs and dead neurons
    measured once for all live members on the stacked network; the others on each member's
    own network."""

    BATCHED = (GradientHistograms, LayerOutputHistograms, DeadNeuronMonitor)

    def __init__(self, diagnostics: list[list[L.Callback]], loggers: list[list]) -> None:
        self.diagnostics, self.loggers = diagnostics, loggers
        # each member's GradientFlow (members' diagnostics settings are equal), found once: the
        # optimiser-step hook runs every step and must cost nothing on the steps it does not sample
        self.flows = {k: d for k, mine in enumerate(diagnostics) for d in mine if isinstance(d, GradientFlow)}
        self.flow_every = next(iter(self.flows.values())).every_n_steps if self.flows else 0

    def write_figures(self) -> None:
        for diagnostic in (d for mine in self.diagnostics for d in mine if isinstance(d, Diagnostic)):
            diagnostic.write_figures()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: PackModule, optimizer) -> None:
        """Every member's GradientFlow gets its rows of the stacked gradients' norms."""
        if not self.flows or trainer.global_step % self.flow_every:
            return
        net = pl_module.net
        norms = torch.stack([torch.linalg.vector_norm(w.grad, dim=(1, 2)) for w in net.weights[:-1]])  # (L, height)
        for k, flow in self.flows.items():
            if pl_module.live[k]:
                flow.add_gradient_norms(norms[:, net.row(k)], first=trainer.global_step == 0)

    def measure_at(self, trainer: L.Trainer, pl_module: PackModule, at_start: bool) -> None:
        live = [k for k in range(pl_module.size) if pl_module.live[k]]
        epoch, step, data = trainer.current_epoch, trainer.global_step, trainer.datamodule
        seconds = {k: 0.0 for k in live}
        with eval_mode(pl_module):
            start = time.perf_counter()
            batched = self._measure_together(pl_module, data, live, step, at_start, epoch)
            for k in live:
                seconds[k] += (time.perf_counter() - start) / max(1, len(live))
            for k in live:
                start = time.perf_counter()
                net = None
                for diagnostic in self.diagnostics[k]:
                    if isinstance(diagnostic, self.BATCHED) and batched:
                        continue
                    if isinstance(diagnostic, ActivationPlot) and at_start:
                        net = net or pl_module.net.member_network(k).eval()
                        diagnostic.draw(net, self.loggers[k])
                    elif isinstance(diagnostic, Diagnostic) and (at_start or diagnostic.due(epoch)):
                        net = net or pl_module.net.member_network(k).eval()
                        diagnostic.measure(net, data, self.loggers[k], step)
                seconds[k] += time.perf_counter() - start
        if not at_start:
            for k in live:
                for diagnostic in self.diagnostics[k]:
                    if isinstance(diagnostic, Diagnostic) and diagnostic.due(epoch):
                        diagnostic.epoch_seconds[epoch] = seconds[k] / max(1, self._due_count(k, epoch))

    def _due_count(self, k: int, epoch: int) -> int:
        return sum(1 for d in self.diagnostics[k] if isinstance(d, Diagnostic) and d.due(epoch))

    def _measure_together(self, pl_module: PackModule, data, live: list[int], step: int, at_start: bool,
                          epoch: int) -> bool:  # fmt: skip
        """Gradients, layer outputs and dead neurons of every live member from passes over the
        stacked network (members' diagnostics settings are equal); False where the members
        have none of them."""
        net = pl_module.net
        found = False
        for kind in self.BATCHED:
            instances = {k: next((d for d in self.diagnostics[k] if type(d) is kind), None) for k in live}
            if not instances or any(d is None for d in instances.values()):
                continue
            found = True
            first = next(iter(instances.values()))
            if not (at_start or first.due(epoch)):
                continue
            if kind is DeadNeuronMonitor:
                counters = scan_members(net, data.probe_set(first.probe_size)[0], first)
                for k, instance in instances.items():
                    instance.record_counters(self.loggers[k], counters[net.row(k)], step)
                continue
            probe = data.probe_set(first.probe_size)
            values = (member_weight_gradients(net, *probe) if kind is GradientHistograms
                      else member_layer_outputs(net, probe[0]))  # fmt: skip
            names = layer_names(net)[: len(values)]
            for k, instance in instances.items():
                instance.record_values(self.loggers[k], names, [v[net.row(k)] for v in values], step)
        return found


class PackEpochLog(L.Callback):
    """One log line per pack epoch: its time, how many members it computed (the pack is
    compacted to its live members at each epoch start) and how many train on."""

    def __init__(self, pack_id: str) -> None:
        self.pack_id = pack_id
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: PackModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: PackModule) -> None:
        log.info("pack %s: epoch %d/%s done in %.1f s computing %d of %d members, %d training on", self.pack_id,
                 trainer.current_epoch + 1, trainer.max_epochs, time.perf_counter() - self._start,
                 pl_module.computed, pl_module.size, sum(pl_module.live))  # fmt: skip
