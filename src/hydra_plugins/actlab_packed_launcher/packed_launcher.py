"""``hydra/launcher=packed``: a sweep's jobs grouped into packs, each trained in one process.

Jobs whose composed configs are equal but for ``seed`` and the activation (its choice and
fields) form packs of at most ``pack_size`` members, each trained as one StackedNetwork by
:func:`actlab.pack.training.train_pack`; a job that fits no pack (alone in its group, or
with settings a pack cannot honour) runs as an ordinary single run. ``n_jobs`` packs run at a
time, each in its own process, sharing the cores (or one GPU); with ``slurm`` set, each pack
is one task of a SLURM job array instead (submitit), requeued on preemption or time-out and
resumed from its members' last finished epoch. Every job still gets its own directory with
``.hydra/``, ``metrics.json``, checkpoints and TensorBoard, as if it ran alone.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from actlab.errors import RunDirectoryError, RunNotCompleted, UserError

log = logging.getLogger(__name__)


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.actlab_packed_launcher.packed_launcher.PackedLauncher"
    # most runs trained together in one pack
    pack_size: int = 64
    # packs (or single runs) at a time, each in its own process
    n_jobs: int = 1
    # members computed alone with their single runs' kernels: bit-identical to them, slower
    exact: bool = False
    # SLURM settings (conf/hydra/launcher/packed_slurm.yaml): each pack one array task; None = this machine
    slurm: dict[str, Any] | None = None


ConfigStore.instance().store(group="hydra/launcher", name="actlab_packed", node=PackedLauncherConf, provider="actlab")


def _as_member(cfg: DictConfig) -> Any:
    """Phase one's task: the job's config, resolved while Hydra still knows its directory."""
    from actlab.pack.members import Member

    hydra_cfg = HydraConfig.get()
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return Member(resolved, Path(hydra_cfg.runtime.output_dir), hydra_cfg.runtime.choices.get("activation"),
                  list(hydra_cfg.overrides.task))  # fmt: skip


def group_into_packs(members: list, pack_size: int) -> tuple[list[list[int]], list[int]]:
    """Indices of ``members`` grouped into packs (by :func:`~actlab.pack.members.pack_key`,
    at most ``pack_size`` each) and the indices that run alone: those alone in their group,
    and those with an option a pack cannot honour (one log line each, saying why). A group
    larger than ``pack_size`` is cut into packs of equal size (parallel workers then finish
    together), except that the runs of one rate-halving group (``callbacks.rate_halving``: an
    activation's rates and seeds) are never cut apart. Within a pack, members with equal
    optimiser settings (learning rate, weight decay) sit side by side."""
    from actlab.pack.members import halving_group, pack_key, packing_refusal, settings_order

    groups: dict[str, list[int]] = {}
    alone = []
    for i, member in enumerate(members):
        reason = packing_refusal(member.cfg)
        if reason:
            log.info("packed launcher: %s runs as a single run: %s", member.output_dir.name, reason)
            alone.append(i)
            continue
        groups.setdefault(pack_key(member.cfg), []).append(i)
    halving = {i: halving_group(members[i].cfg) for indices in groups.values() for i in indices}
    packs = []
    for indices in groups.values():
        sizes = Counter(halving[i] for i in indices)
        for i in indices:  # how many jobs of the sweep a pack must hold to compare the rates of i's group
            members[i].halving_peers = sizes[halving[i]] if halving[i] is not None else None
        indices.sort(key=lambda i: settings_order(members[i].cfg))
        for chunk in _chunks(indices, pack_size, halving):
            if len(chunk) > 1:
                packs.append(chunk)
                continue
            if len(indices) == 1:
                log.info("packed launcher: %s runs as a single run: no other job of the sweep has its settings but "
                         "for seed, activation, optimizer.lr and optimizer.weight_decay",
                         members[chunk[0]].output_dir.name)  # fmt: skip
            alone += chunk
    return packs, sorted(alone)


def _chunks(indices: list[int], pack_size: int, halving: dict[int, str | None]) -> list[list[int]]:
    """``indices`` (in pack order) cut into packs of equal size, none over ``pack_size``; where
    runs ask for rate halving, a group's runs stay in one pack (packs filled group by group,
    each pack in pack order), so that it can compare their rates."""
    size = -(-len(indices) // -(-len(indices) // pack_size))  # packs of equal size, none over pack_size
    if all(halving[i] is None for i in indices):
        return [indices[start : start + size] for start in range(0, len(indices), size)]
    by_group: dict[str | None, list[int]] = {}
    for i in indices:
        by_group.setdefault(halving[i], []).append(i)
    chunks, current = [], []
    for group in by_group.values():
        if current and len(current) + len(group) > size:
            chunks.append(current)
            current = []
        current += group  # a group larger than pack_size is one pack of its own (never cut)
    chunks.append(current)
    order = {i: n for n, i in enumerate(indices)}
    return [sorted(chunk, key=order.get) for chunk in chunks if chunk]


def _log_to(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    return handler


_STOP: Any = None  # in a worker process: set once the sweep is stopped (no unit starts after that)


def _share_stop(stop: Any) -> None:
    global _STOP
    _STOP = stop


def run_work(kind: str, members: list, pack_id: str, log_file: str, parallel_jobs: int | None) -> list[dict]:
    """One unit of a packed sweep, in this process: a pack, or one single run. Returns the
    members' records. A failure is in its records, not re-raised: one that the unit's own code
    did not record (a pack that cannot be formed, a log file that cannot be opened) is recorded
    ``failed`` with its error in every member's record the unit had not closed."""
    from actlab.pack.training import train_pack
    from actlab.record import read_record, record_unit_failure
    from actlab.training import run

    if _STOP is not None and _STOP.is_set():  # the sweep was stopped before this unit began
        return [read_record(m.output_dir) or {"status": "queued"} for m in members]
    handler = None
    try:
        handler = _log_to(Path(log_file))
        if kind == "pack":
            train_pack(members, pack_id, parallel_jobs, log_file, Path(log_file).with_suffix(""))
        else:
            (member,) = members
            run(member.cfg, member.output_dir, member.activation, member.overrides, parallel_jobs)
    except Exception as error:
        if isinstance(error, UserError):  # a mistake to fix: one line, the traceback is in the record
            log.error("error: %s", error)
        else:
            log.exception("%s %s failed", kind, pack_id)
        for member in members:
            record_unit_failure(member.output_dir, error)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    return [read_record(m.output_dir) or {"status": "failed", "error": "no record written"} for m in members]


class SlurmPackJob:
    """One pack (or single run) as a submitit job. Preemption and time-outs go through
    Lightning's own SLURM requeue, as for a single run (``hydra/launcher=slurm``): SLURM
    signals USR1 before the limit, Lightning saves the pack's checkpoint into the pack's
    folder and requeues the task, and the requeued task's Trainer resumes from it."""

    def __call__(self, kind: str, members: list, pack_id: str, log_file: str) -> list[dict]:
        return run_work(kind, members, pack_id, log_file, None)  # threads: the CPUs SLURM gave the task


@contextlib.contextmanager
def slurm_errors_explained():
    """SLURM refusing a submission (no client, no controller, a bad option) ends the sweep
    with one line saying what failed and how to check, not submitit's traceback."""
    from submitit.core.utils import FailedJobError

    try:
        yield
    except (FailedJobError, FileNotFoundError, subprocess.CalledProcessError) as err:
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        raise SystemExit(
            f"error: SLURM did not take the jobs: {lines[-1] if lines else type(err).__name__}\n"
            "(check that this machine reaches a SLURM controller: `sinfo` should list its partitions; "
            "or run the sweep with another hydra/launcher)"
        ) from err


def submit_to_slurm(work: list, settings: dict[str, Any], sweep_dir: Path) -> list[list[dict]]:
    """Each unit of ``work`` as one task of a SLURM job array; blocks until all are done."""
    import submitit

    settings = dict(settings)
    executor = submitit.AutoExecutor(folder=str(sweep_dir / ".submitit" / "%j"), cluster="slurm",
                                     slurm_max_num_timeout=settings.pop("max_num_timeout", 3))  # fmt: skip
    generic = {"timeout_min", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb", "name"}
    executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in settings.items() if v is not None})
    with slurm_errors_explained():
        jobs = executor.map_array(SlurmPackJob(), *zip(*[unit[:4] for unit in work]))
    log.info("packed launcher: %d SLURM array tasks (%s)", len(jobs), ", ".join(j.job_id for j in jobs))
    results = []
    for job, (_, members, *_) in zip(jobs, work):
        try:
            results.append(job.results()[0])
        except Exception as error:  # outside run_work: the task killed, its requeues spent
            results.append(unit_failed(members, error))
    return results


def unit_failed(members: list, error: BaseException) -> list[dict]:
    """A unit that failed outside :func:`run_work` (its process died, its SLURM task failed):
    its members' records that had not ended say ``failed`` with ``error``; returns them all."""
    from actlab.record import record_unit_failure

    log.error("packed launcher: a unit of %d jobs failed: %s: %s", len(members), type(error).__name__, error)
    return [record_unit_failure(m.output_dir, error) for m in members]


def run_in_processes(work: list, n_jobs: int, parallel: int | None) -> dict[int, dict]:
    """Every unit of ``work`` in ``n_jobs`` worker processes; returns the jobs' records by index.
    SIGTERM or SIGINT to this process reaches every worker (each records its members
    ``interrupted`` after its last finished epoch) and cancels the units not started; this
    process then exits with the signal's code, leaving no worker behind."""
    from actlab.record import read_record

    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
    records: dict[int, dict] = {}
    stop = context.Event()
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context, initializer=_share_stop, initargs=(stop,)) as pool:
        futures = [(pool.submit(run_work, kind, group, name, log_file, parallel), group, indices)
                   for kind, group, name, log_file, indices in work]  # fmt: skip
        with signals_forwarded_to_workers([f for f, _, _ in futures], stop) as received:
            for future, group, indices in futures:
                try:
                    records.update(zip(indices, future.result()))
                except (CancelledError, SystemExit, BrokenProcessPool) as error:
                    if not received:  # no signal stopped it: its worker died under it
                        unit_failed(group, error)
                    # stopped: what the records say (the units not started stay queued)
                    records.update(zip(indices, [read_record(m.output_dir) or {"status": "queued"} for m in group]))
                except Exception as error:
                    records.update(zip(indices, unit_failed(group, error)))
    if received:
        log.error("packed launcher: stopped by signal %d; resume=true with the same sweep dir finishes it",
                  received[0])  # fmt: skip
        raise SystemExit(128 + received[0])
    return records


@contextlib.contextmanager
def signals_forwarded_to_workers(futures: list[Future], stop: Any):
    """Inside the block, SIGTERM / SIGINT to this process go to its worker processes, set
    ``stop`` (no unit starts after it) and cancel the futures not handed to a worker yet;
    yields the list of signals received."""
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        stop.set()
        for future in futures:
            future.cancel()
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class PackedLauncher(Launcher):
    def __init__(self, pack_size: int = 64, n_jobs: int = 1, exact: bool = False,
                 slurm: dict[str, Any] | None = None) -> None:  # fmt: skip
        if pack_size < 1 or n_jobs < 1:
            raise ValueError(f"hydra.launcher.pack_size and n_jobs must be >= 1, got {pack_size}, {n_jobs}")
        self.pack_size, self.n_jobs, self.exact = pack_size, n_jobs, exact
        self.slurm = OmegaConf.to_container(slurm, resolve=True) if isinstance(slurm, DictConfig) else slurm
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        # job overrides -> the job's config, where the sweeper has composed them
        self.composed: dict[tuple[str, ...], DictConfig] = {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _prepare(self, overrides: Sequence[str], idx: int) -> JobReturn:
        """Compose job ``idx`` and lay out its directory (``.hydra/``) exactly as Hydra's basic
        launcher would, without running it: the JobReturn's value is the job's Member."""
        sweep_config = self.composed.pop(tuple(overrides), None)  # composed by hydra/sweeper=actlab already
        if sweep_config is None:
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        return run_job(_as_member, sweep_config, "hydra.sweep.dir", "hydra.sweep.subdir", self.hydra_context,
                       configure_logging=False)  # fmt: skip

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        prepared = [self._prepare(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        from actlab.record import check_run_directory, queue_record

        members, refused = [], {}
        for i, job in enumerate(prepared):
            member = job.return_value
            member.exact = self.exact
            try:  # a directory another run owns is left as it is: that job fails, the others run
                check_run_directory(member.output_dir, bool(member.cfg.get("resume")))
            except RunDirectoryError as error:
                log.error("error: %s", error)
                refused[i] = error
                continue
            members.append((i, member))
            # every job has its record from here on, whatever happens to it
            config = OmegaConf.to_container(member.cfg, resolve=True)
            queue_record(member.output_dir, activation=member.activation, overrides=list(member.overrides),
                         seed=member.cfg.get("seed"), config=config)  # fmt: skip
        index, members = [i for i, _ in members], [m for _, m in members]
        packs, alone = group_into_packs(members, self.pack_size)
        packs, alone = [[index[i] for i in p] for p in packs], [index[i] for i in alone]
        members = {i: m for i, m in zip(index, members)}
        log.info("packed launcher: %d jobs -> %d packs (%s members) + %d single runs, %d at a time, in %s",
                 len(members), len(packs), "+".join(str(len(p)) for p in packs) or "0", len(alone), self.n_jobs,
                 sweep_dir)  # fmt: skip
        for i, job in enumerate(prepared):
            log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(job.overrides)))
        work = [("pack", [members[i] for i in p], f"pack-{n}", str(sweep_dir / ".packs" / f"pack-{n}.log"), p)
                for n, p in enumerate(packs)]  # fmt: skip
        work += [("single", [members[i]], f"job-{i}", str(members[i].output_dir / "train.log"), [i]) for i in alone]
        parallel = self.n_jobs if self.n_jobs > 1 else None
        records: dict[int, dict] = {}
        if self.slurm is not None:
            for unit, results in zip(work, submit_to_slurm(work, self.slurm, sweep_dir)):
                records.update(zip(unit[4], results))
        elif self.n_jobs == 1:
            for kind, group, name, log_file, indices in work:
                records.update(zip(indices, run_work(kind, group, name, log_file, parallel)))
        else:
            records = run_in_processes(work, self.n_jobs, parallel)
        return self._results(prepared, records, refused)

    @staticmethod
    def _results(jobs: list[JobReturn], records: dict[int, dict], refused: dict[int, Exception]) -> list[JobReturn]:
        """Every job's outcome from its record (or why it was refused); the sweeper names every
        job that did not complete once the sweep is over."""
        from actlab.record import RESULTS

        for i, job in enumerate(jobs):
            record = records.get(i, {})
            if i in refused:
                job.status, job.return_value = JobStatus.FAILED, refused[i]
            elif record.get("status") in RESULTS:  # a diverging loss is a result, as alone
                job.status, job.return_value = JobStatus.COMPLETED, record.get("val/acc_best")
            else:
                job.status = JobStatus.FAILED
                job.return_value = RunNotCompleted(f"{record.get('status')}: {record.get('error')}")
        return jobs
