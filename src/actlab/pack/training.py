"""Train a pack: K runs of one architecture in one process, by Lightning's Trainer.

Member k is the run ``python train.py <its overrides>`` would have done: the same initial
weights (built from its own seed by the single run's own builder), its own batch order (the
random stream its single run shuffles with), the same optimiser semantics (SGD and Adam are
elementwise, so one step over the stacked parameters is K separate steps), the same record,
checkpoints, TensorBoard and figures in its own directory. The Trainer is the one
:func:`actlab.training.trainer_for` builds for a single run, from the same config groups;
what differs per member lives in callbacks (:mod:`actlab.pack.callbacks`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from actlab.callbacks.diagnostic import Diagnostic
from actlab.callbacks.requeue import RequeueGuard
from actlab.console import summary_line
from actlab.errors import ConfigError
from actlab.pack.callbacks import (
    MemberCallbacks,
    MemberDiagnostics,
    MemberDivergence,
    MemberEarlyStopping,
    MemberHistory,
    MemberModelCheckpoint,
    PackClock,
    PackEpochLog,
    PackRateHalving,
)
from actlab.pack.checkpoint import PackCheckpointIO, pack_checkpoint, save_atomically, stopped_early
from actlab.pack.data import PackDataModule
from actlab.pack.loggers import PackLogger
from actlab.pack.members import (
    CHECKPOINT_TARGETS,
    PACK_WIDE_CALLBACKS,
    SHARED_CALLBACKS,
    Member,
    halving_group,
    member_settings,
    pack_key,
    packing_refusal,
)
from actlab.pack.module import PackModule, member_prefix
from actlab.pack.stacked import StackedNetwork
from actlab.record import RESULTS, RunRecord, read_record
from actlab.training import (
    Resume,
    accelerator_name,
    best_checkpoint,
    build_data_and_classifier,
    build_loggers,
    call_trainer,
    configure_process,
    configured_callbacks,
    instantiate_group,
    load_checkpoint,
    model_fields,
    open_record,
    resume_description,
    resume_point,
    resume_step,
    seed_run,
    stop_fields,
    tested_checkpoint,
    timed_fit,
    trainer_for,
    write_final_hparams,
)

log = logging.getLogger(__name__)


def check_packable(members: list[Member]) -> None:
    """Members that cannot be one pack fail here, before anything is built."""
    if not members:
        raise ValueError("a pack needs at least one member")
    if len({pack_key(m.cfg) for m in members}) != 1:
        raise ConfigError(
            "a pack's members must have equal configs but for seed, activation, optimizer.lr and optimizer.weight_decay"
        )
    if len({m.exact for m in members}) != 1:
        raise ConfigError("a pack's members are all exact or none is (hydra.launcher.exact)")
    reason = packing_refusal(members[0].cfg)
    if reason:
        raise ConfigError(f"{reason}; run these jobs as single runs (hydra/launcher=basic)")


def resumes_as(resume: Resume) -> tuple[int, int] | str:
    """What members must share to resume as one pack: the epoch and step they are at ("fresh"
    for none, "stopped" for a member whose early stopping had ended it)."""
    if resume.checkpoint is None:
        return "fresh"
    if stopped_early(resume.checkpoint):
        return "stopped"
    return resume.checkpoint["epoch"], resume.checkpoint["global_step"]


class PackRun:
    """One fit and test of a pack, with every member's record open around it. A member that
    fails to build (a bad value) is recorded ``failed`` and leaves the pack; the others train."""

    def __init__(self, members: list[Member], pack_id: str, parallel_jobs: int | None, log_file: str | None,
                 pack_dir: Path, resumes: list[Resume] | None = None) -> None:  # fmt: skip
        check_packable(members)
        self.members, self.pack_id, self.parallel_jobs, self.pack_dir = members, pack_id, parallel_jobs, pack_dir
        self.resumes = resumes or [Resume() for _ in members]
        self.cfg = members[0].cfg
        self.records = [
            open_record(m.cfg, m.output_dir, m.activation, m.overrides, resume,
                        pack={"id": pack_id, "size": len(members), "index": k, "log": log_file, "exact": m.exact})
            for k, (m, resume) in enumerate(zip(members, self.resumes))
        ]  # fmt: skip
        self.every_record = list(self.records)  # the members that leave the pack keep theirs
        self.closed: set[Path] = set()  # the members whose closing line is said

    # -- building ---------------------------------------------------------------------------

    def _build_module(self) -> tuple[PackModule, PackDataModule] | None:
        """The members' networks, each built by the single run's builder from its own seed,
        stacked, and the random stream each would shuffle with. A member that fails to build
        is recorded ``failed`` and leaves the pack (None: none is left)."""
        configure_process(self.cfg, self.parallel_jobs)
        built = []
        for k, (member, record) in enumerate(zip(self.members, self.records)):
            try:
                seed_run(member.cfg)
                datamodule, classifier = build_data_and_classifier(member.cfg)
            except Exception as error:  # its closing line says so; its pack-mates train
                self._close(k, error)
                continue
            record.update(**model_fields(classifier))
            built.append((k, classifier, datamodule, torch.get_rng_state()))
        if not built:
            return None
        self._keep([k for k, *_ in built])
        keys = [json.dumps(OmegaConf.to_container(m.cfg.activation, resolve=True), sort_keys=True)
                for m in self.members]  # fmt: skip
        classifier, datamodule = built[0][1], built[0][2]
        stacked = StackedNetwork([c.net for _, c, _, _ in built], keys, exact=self.members[0].exact)
        module = PackModule(stacked, classifier.optimizer_factory, classifier.scheduler_factory,
                            [member_settings(m.cfg) for m in self.members], classifier.steps_per_call)  # fmt: skip
        return module, PackDataModule(datamodule, [state for *_, state in built])

    def _keep(self, kept: list[int]) -> None:
        """The pack goes on with these members only (the others' records are closed)."""
        self.members, self.records, self.resumes = ([xs[k] for k in kept] for xs in
                                                    (self.members, self.records, self.resumes))  # fmt: skip
        for k, record in enumerate(self.records):
            record.update(pack={**record.data["pack"], "size": len(kept), "index": k})

    def _callbacks(self, k: int, record: RunRecord, clock: PackClock) -> tuple[list[L.Callback], list[L.Callback]]:
        """Member k's callbacks in the pack (history, checkpoints, early stopping), and its
        diagnostics (measured by :class:`MemberDiagnostics`); its history times the pack's
        epochs by ``clock``."""
        cfg = self.members[k].cfg
        callbacks, diagnostics = [], []
        for name, entry in (cfg.get("callbacks") or {}).items():
            if entry is None or "_target_" not in entry:
                continue
            settings = {key: value for key, value in OmegaConf.to_container(entry, resolve=True).items()
                        if key != "_target_"}  # fmt: skip
            if entry._target_ in CHECKPOINT_TARGETS:
                callbacks.append(MemberModelCheckpoint(k, **settings))
            elif entry._target_ == "actlab.callbacks.early_stopping":
                stopper = instantiate(entry, build=functools.partial(MemberEarlyStopping, k))
                callbacks += [stopper] if stopper is not None else []
            elif entry._target_ in PACK_WIDE_CALLBACKS:
                continue  # the pack's own (see _rate_halving)
            elif not entry._target_.startswith("lightning."):
                diagnostics.extend(instantiate_group({name: entry}))
        history = MemberHistory(k, record, [d for d in diagnostics if isinstance(d, Diagnostic)], clock)
        return [history, *callbacks], diagnostics

    def _trainer(self, module: PackModule, data: PackDataModule) -> L.Trainer:
        # members without a checkpoint of their own: a SLURM requeue's step, or a fresh start's
        fresh = None
        if any(r.checkpoint is None for r in self.resumes):
            fresh = resume_step(Resume(), self.cfg, self.pack_dir)
        member_loggers = [build_loggers(m.cfg, r.checkpoint.get("global_step") if r.checkpoint is not None else fresh)
                          for m, r in zip(self.members, self.resumes)]  # fmt: skip
        per_member, self.diagnostics, clock = [], [], PackClock()
        for k, record in enumerate(self.records):
            callbacks, diagnostics = self._callbacks(k, record, clock)
            per_member += callbacks
            self.diagnostics.append(diagnostics)
        # Lightning's order in a single run: RunHistory's epoch-end hook before the monitoring callbacks, and
        # checkpoints last (so a checkpoint holds the epoch's history and early-stopping state); every member's
        # history first, each timing the pack's epoch (by the shared clock), whatever its place in the pack
        per_member.sort(key=lambda c: (not isinstance(c, MemberHistory), isinstance(c, ModelCheckpoint)))
        self.member_callbacks = per_member
        self._rate_halving([c for c in per_member if isinstance(c, MemberEarlyStopping)])
        callbacks = [
            RequeueGuard(),  # SLURM's requeue checkpoint taken where the pack resumes as it goes on
            MemberDivergence(self.records),
            *configured_callbacks(self.cfg, SHARED_CALLBACKS),  # progress bar, learning-rate monitor
            MemberDiagnostics(self.diagnostics, member_loggers),
            MemberCallbacks(per_member),
            PackEpochLog(self.pack_id),
        ]
        io = PackCheckpointIO(module, [m.output_dir for m in self.members], type(data.members_data).__qualname__)
        self.member_loggers = member_loggers
        groups = [module.group_of(k) for k in range(module.size)] if len(module.runs) > 1 else None
        logger = PackLogger(member_loggers, str(self.pack_dir), groups, module.last_steps, module.last_epochs)
        return trainer_for(self.cfg, callbacks, [logger], default_root_dir=str(self.pack_dir), plugins=[io])

    def _rate_halving(self, stoppers: list[MemberEarlyStopping]) -> None:
        """Wire the members' early stopping to the pack's rate halving, where the members ask for it."""
        entry = (self.cfg.get("callbacks") or {}).get("rate_halving")
        if entry is None or "_target_" not in entry:
            return
        rule = instantiate(entry)
        if len(stoppers) != len(self.members):
            raise ConfigError("callbacks.rate_halving stops members through their early stopping: "
                              "set callbacks.early_stopping.patience")  # fmt: skip
        if rule.after_epochs > 1 and not all(s.monitor.endswith("val/acc") for s in stoppers):
            raise ConfigError("callbacks.rate_halving.after_epochs > 1 compares the best val/acc so far: "
                              "set callbacks.early_stopping.monitor=val/acc")  # fmt: skip
        groups = [halving_group(m.cfg) for m in self.members]
        peers = {g: {m.halving_peers for m, h in zip(self.members, groups) if h == g} for g in set(groups)}
        complete = {g for g, counts in peers.items() if counts == {groups.count(g)}}
        for group in set(groups) - complete:
            names = [m.output_dir.name for m, h in zip(self.members, groups) if h == group]
            log.info("pack %s: rate halving off for %s: the pack does not hold every job of their group, "
                     "so they train their full budget", self.pack_id, ", ".join(names))  # fmt: skip
        halving = PackRateHalving(rule, groups, [float(m.cfg.optimizer.lr) for m in self.members],
                                  {s.member: s for s in stoppers}, complete)  # fmt: skip
        for stopper in stoppers:
            stopper.halving = halving

    # -- the whole run -----------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Train every member, test it, and close its record; returns the records."""
        for record in self.records:
            record.__enter__()
        try:
            built = self._build_module()
            if built is None:
                return [record.data for record in self.every_record]
            module, data = built
            ckpt_path = self._join(module, data)
            trainer = self._trainer(module, data)
            for record in self.records:
                record.update(accelerator=accelerator_name(trainer))
            timed_fit(trainer, module, data, ckpt_path, self.records)
            self._after_fit(trainer, module, data)
        except (KeyboardInterrupt, SIGTERMException) as interruption:
            # every member's last.ckpt is its last finished epoch: resume=true continues from there
            self._close_all(interruption)
            raise SystemExit(128 + (15 if isinstance(interruption, SIGTERMException) else 2)) from interruption
        except BaseException as error:
            self._close_all(error)
            raise
        return [record.data for record in self.every_record]

    def _join(self, module: PackModule, data: PackDataModule) -> str | None:
        """The pack's checkpoint to resume from, joined from the members' (None: a fresh start;
        :func:`train_pack` packs members apart that resume from different points)."""
        if all(r.checkpoint is None for r in self.resumes):
            return None
        checkpoints = [r.checkpoint for r in self.resumes]
        checkpoint, stopped = pack_checkpoint(checkpoints, module, type(data.members_data).__qualname__)
        # a member's checkpoint at the end of the epoch it stopped in: that epoch done
        module.keep_stopped({k: (checkpoints[k]["global_step"], checkpoints[k]["epoch"] + 1) for k in stopped})
        path = self.pack_dir / "resume.ckpt"
        save_atomically(checkpoint, path)
        return str(path)

    def _after_fit(self, trainer: L.Trainer, module: PackModule, data: PackDataModule) -> None:
        live = [k for k in range(len(self.members)) if module.tested[k]]
        for k in live:
            self._update_record(trainer, k)
        if self.cfg.get("test_after_fit", True) and live:
            self._test(trainer, module, data, live)
        for k in range(len(self.members)):
            self._close(k, None)  # a diverged member's record is closed already: its closing line
            if k in live:
                write_final_hparams(self.member_loggers[k], self.records[k].data, module.member_step(k))

    def _member_callbacks(self, k: int, kind: type) -> list:
        return [c for c in self.member_callbacks if isinstance(c, kind) and c.member == k]

    def _update_record(self, trainer: L.Trainer, k: int) -> None:
        record = self.records[k]
        (history,) = self._member_callbacks(k, MemberHistory)
        record.update(**history.record_fields(trainer))
        stoppers = self._member_callbacks(k, MemberEarlyStopping)
        record.update(**stop_fields(trainer, stoppers[0] if stoppers else None, history))

    def _test(self, trainer: L.Trainer, module: PackModule, data: PackDataModule, live: list[int]) -> None:
        """Test every member at once, on its last weights or (``test_ckpt=best``) its best
        epoch's, loaded from its own best checkpoint into its slot of the pack."""
        which = self.cfg.get("test_ckpt", "last")
        module.expand()  # members taken out of the stack when they stopped come back to be tested
        for k in live:
            checkpoint, contents = None, None
            if which == "best":
                checkpoint = best_checkpoint(self._member_callbacks(k, ModelCheckpoint), f"{member_prefix(k)}val/acc")
                contents = load_checkpoint(Path(checkpoint))
            self.records[k].update(test_ckpt=tested_checkpoint(which, checkpoint, self.records[k], contents))
            if contents is not None:
                module.load_member_weights(k, contents["state_dict"])
        module.tested = [k in live for k in range(len(self.members))]
        call_trainer(trainer, "test", module, datamodule=data, verbose=False)
        metrics = trainer.callback_metrics
        for k in live:
            prefix = member_prefix(k)
            self.records[k].update(**{key[len(prefix) :]: float(value) for key, value in metrics.items()
                                      if key.startswith(f"{prefix}test/")})  # fmt: skip

    def _close(self, k: int, error: BaseException | None) -> None:
        """Close member k's record with the outcome ``error`` stands for (None: completed), and
        say how it went in one closing line (a diverged member's record is closed already)."""
        record = self.records[k]
        if record.output_dir in self.closed:
            return
        if record.data["status"] == "running":
            with contextlib.suppress(SystemExit):  # an interruption: the pack exits once, every member recorded
                record.__exit__(type(error) if error else None, error, error.__traceback__ if error else None)
        self.closed.add(record.output_dir)
        log.info(summary_line(record.data))

    def _close_all(self, error: BaseException) -> None:
        for k in range(len(self.records)):
            self._close(k, error)


def train_pack(members: list[Member], pack_id: str = "pack", parallel_jobs: int | None = None,
               log_file: str | None = None, pack_dir: str | Path | None = None) -> list[dict]:  # fmt: skip
    """Train ``members`` as one pack (see :class:`PackRun`); members whose record says
    ``completed`` or ``diverged`` (results) are skipped, in one log line, when their config asks to resume, and the
    others resume each from its own newest checkpoint that loads: members that resume from
    different points (a fallback, a fresh start, an early stop) are trained as packs apart.
    ``pack_dir`` holds the pack's own files (default: ``.packs/<pack_id>`` beside the first
    member's directory). Returns the records in the order of ``members``."""
    records = {m.output_dir: record for m in members if m.cfg.get("resume")
               and (record := read_record(m.output_dir)) and record.get("status") in RESULTS}  # fmt: skip
    if records:
        log.info("resume: pack %s skips %d members already done: %s", pack_id, len(records),
                 ", ".join(f"{path} ({record['status']})" for path, record in records.items()))  # fmt: skip
    todo = [m for m in members if m.output_dir not in records]
    pack_dir = Path(pack_dir) if pack_dir else members[0].output_dir.parent / ".packs" / pack_id
    groups: dict[Any, list[tuple[Member, Resume]]] = {}
    for member in todo:
        steps = member.cfg.trainer.get("max_steps", -1)
        resume = resume_point(member.output_dir, steps) if member.cfg.get("resume") else Resume()
        if resume.warning:
            log.warning("resume: %s", resume.warning)
        groups.setdefault(resumes_as(resume), []).append((member, resume))
    for i, group in enumerate(groups.values()):
        name = pack_id if len(groups) == 1 else f"{pack_id}.{i}"
        if len(groups) > 1:
            log.info("pack %s: %d members resume from their own point, as pack %s", pack_id, len(group), name)
        if group[0][0].cfg.get("resume"):
            where = resume_description(group[0][1])
            if resumes_as(group[0][1]) == "stopped":  # each at the epoch it stopped in
                where = "that had stopped early, each from its own checkpoint"
            elif group[0][1].path is not None:  # each member from its own checkpoint, all at one point
                where = where.replace(f"from {group[0][1].path} ", "from each member's checkpoint ")
            log.info("resume: pack %s: %d members %s", name, len(group), where)
        run = PackRun([m for m, _ in group], name, parallel_jobs, log_file, pack_dir.with_name(name),
                      [r for _, r in group])  # fmt: skip
        records.update((m.output_dir, record) for (m, _), record in zip(group, run.run()))
    return [records[m.output_dir] for m in members]


__all__ = ["Member", "PackRun", "train_pack"]
