"""The run record: ``metrics.json`` in each run's output directory.

One JSON object per run, owned by :class:`RunRecord`: written when a packed sweep's launcher
knows the run (``status: queued``, :func:`queue_record`) and when the run starts
(``status: running``), rewritten after every epoch (the history so far and ``updated_at``,
a heartbeat) and when the run ends, whatever the ending: ``completed``, ``failed``,
``diverged`` or ``interrupted``. Every write is atomic (write + rename), so a killed process
leaves the last complete record. Sweep summaries read these files, never TensorBoard; a
``running`` record whose heartbeat is stale is reported as ``lost`` (:func:`effective_status`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from actlab.errors import DivergedError, RunDirectoryError

RECORD_FILE = "metrics.json"
STATUSES = ("queued", "running", "completed", "failed", "diverged", "interrupted")
# the endings that are results (a diverging loss is one): resume=true skips them, a sweep counts them done
RESULTS = ("completed", "diverged")
# derived, never written: a `running` record whose process stopped writing (killed, node lost)
LOST = "lost"
# a running record counts as lost once its heartbeat is this old, or 5x its longest epoch
LOST_AFTER_S = 900.0
# fields every record has from its first write on (None / empty until the run fills them)
SCHEMA_DEFAULTS: dict[str, Any] = {
    "activation": None, "overrides": [], "seed": None, "config": None, "depth": None, "hidden_shape": None,
    "init": None, "num_parameters": None, "accelerator": None, "resumed_from": None, "epochs_completed": 0,
    "epoch_times_s": [], "epoch_time_s": None, "diagnostics_epoch_s": [], "history": {}, "val/acc_last": None,
    "val/acc_best": None, "best_epoch": None, "stopped_epoch": None, "stop_reason": None,
    "partial_epochs": [], "test_ckpt": None, "test/acc": None,
    "test/loss": None, "fit_time_s": None, "owner": None,
}  # fmt: skip


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_safe(value: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN); tensors and numpy scalars become floats."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_record(output_dir: str | Path, record: dict[str, Any]) -> Path:
    """Atomically (write + rename) store ``record`` as ``<output_dir>/metrics.json``."""
    if record.get("status") not in STATUSES:
        raise ValueError(f"record status must be one of {STATUSES}, got {record.get('status')!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RECORD_FILE
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".metrics.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(_json_safe(record), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def queue_record(output_dir: str | Path, **fields: Any) -> None:
    """A ``queued`` record for a run a sweep knows of but has not started (none is written
    over a record the run already has: a resumed sweep keeps its runs' histories)."""
    if not (Path(output_dir) / RECORD_FILE).exists():
        write_record(output_dir, {**SCHEMA_DEFAULTS, **fields, "status": "queued", "output_dir": str(output_dir),
                                  "queued_at": _now()})  # fmt: skip


def record_unit_failure(output_dir: str | Path, error: BaseException) -> dict[str, Any]:
    """The record of a run whose unit of work (its pack, its launcher's process) failed around
    it: ``failed`` with ``error`` where the run had not ended (queued, running, or no record), its
    history kept; a record the run closed itself is left as it is, and so is a directory that
    belongs to another run (:class:`RunDirectoryError`: its record is that run's). Returns the record."""
    previous = read_record(output_dir)
    if isinstance(error, RunDirectoryError):
        return previous
    if previous is not None and previous.get("status") not in ("queued", "running"):
        return previous
    record = RunRecord(output_dir, **{k: v for k, v in (previous or {}).items() if k not in ("status", "output_dir")})
    record.__exit__(type(error), error, error.__traceback__)
    return record.data


def read_record(output_dir: str | Path) -> dict[str, Any] | None:
    """The record of a run directory, or None if it has none or it cannot be parsed."""
    path = Path(output_dir) / RECORD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def effective_status(record: dict[str, Any], now: datetime | None = None) -> str:
    """The record's status, except that a ``running`` record whose heartbeat (``updated_at``)
    is older than ``LOST_AFTER_S`` and five times its longest epoch is ``lost``: its process
    died without a word (SIGKILL, out of memory, a lost node). ``resume=true`` resumes it."""
    status = record.get("status", "running")
    if status != "running":
        return status
    try:
        updated = datetime.fromisoformat(record.get("updated_at") or record["started_at"])
    except (KeyError, TypeError, ValueError):
        return LOST
    longest_epoch = max((t for t in record.get("epoch_times_s") or [] if t), default=0.0)
    age = ((now or datetime.now(timezone.utc)) - updated).total_seconds()
    return LOST if age > max(LOST_AFTER_S, 5 * longest_epoch) else status


def current_owner() -> dict[str, Any]:
    """Who writes a record: this host and process, and the SLURM job it runs in (a requeued
    job keeps its ``SLURM_JOB_ID``, so its next attempt is recognised as the same run)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID")}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _same_slurm_job(record: dict[str, Any]) -> bool:
    """Whether ``record`` was written by an earlier attempt of this SLURM job (a requeue)."""
    job = (record.get("owner") or {}).get("slurm_job")
    return bool(job) and job == os.environ.get("SLURM_JOB_ID")


def live_owner(record: dict[str, Any]) -> str | None:
    """Who is training into the record's directory right now (None: nobody else is): a
    ``running`` record whose heartbeat is fresh, written by another process that is still
    alive (checked on this host, trusted by heartbeat on another), and not by an earlier
    attempt of this very SLURM job (a requeue)."""
    if effective_status(record) != "running" or _same_slurm_job(record):
        return None
    owner, me = record.get("owner") or {}, current_owner()
    pid = owner.get("pid")
    if owner.get("host") == me["host"] and (pid == me["pid"] or not isinstance(pid, int) or not _process_alive(pid)):
        return None
    heartbeat = record.get("updated_at") or record.get("started_at")
    return f"process {pid} on {owner.get('host')}, last heartbeat {heartbeat}"


def check_run_directory(output_dir: str | Path, resume: bool) -> dict[str, Any] | None:
    """The record already in ``output_dir`` (None: none), after making sure this run may
    write there. A run never starts in a directory a live run owns, and a fresh start never
    writes over results (trained epochs, checkpoints, a completed run): ``resume=true``
    continues them, another directory starts anew. Raises :class:`RunDirectoryError`."""
    output_dir = Path(output_dir)
    previous = read_record(output_dir)
    owner = live_owner(previous) if previous else None
    if owner:
        raise RunDirectoryError(f"{output_dir} belongs to a run still training ({owner}); wait for it, or choose "
                                "another directory (hydra.run.dir=... / hydra.sweep.dir=...)")  # fmt: skip
    if resume or (previous and _same_slurm_job(previous)):  # a requeued job goes on from its own checkpoint
        return previous
    checkpoints = sorted(p.name for p in (output_dir / "checkpoints").glob("*.ckpt"))
    trained = previous is not None and (previous.get("epochs_completed") or previous.get("status") == "completed")
    if trained or checkpoints:
        what = (f"a {effective_status(previous)} run with {previous.get('epochs_completed') or 0} epochs"
                if previous else f"checkpoints ({', '.join(checkpoints)})")  # fmt: skip
        raise RunDirectoryError(f"{output_dir} already holds {what}; resume=true continues it (a completed run is "
                                "kept as it is), or choose another directory (hydra.run.dir=... / "
                                "hydra.sweep.dir=...)")  # fmt: skip
    return previous


class RunRecord:
    """The record of one run, and the one place that knows its schema and status rules.

    Use it as a context manager around the run: entering writes ``status: running``;
    leaving writes the outcome the way the run ended:

    - normally: ``completed``;
    - :class:`~actlab.errors.DivergedError`: ``diverged`` with the error (swallowed: a
      diverging loss is a result, and a sweep goes on);
    - Ctrl-C / SIGTERM: ``interrupted``, then ``SystemExit(128 + signal)``;
    - any other exception: ``failed`` with the error and traceback, re-raised.

    In between, :meth:`update` sets fields and :meth:`write` stores them (the per-epoch
    heartbeat). ``data`` is the record as a dict.
    """

    def __init__(self, output_dir: str | Path, **fields: Any) -> None:
        self.output_dir = Path(output_dir)
        self.data: dict[str, Any] = {**SCHEMA_DEFAULTS, "status": "running", "output_dir": str(self.output_dir),
                                     "owner": current_owner()}  # fmt: skip
        self.data.update(fields)

    @property
    def path(self) -> Path:
        return self.output_dir / RECORD_FILE

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def write(self) -> Path:
        self.data["updated_at"] = _now()
        return write_record(self.output_dir, self.data)

    def __enter__(self) -> RunRecord:
        self.data.setdefault("started_at", _now())
        self.write()
        return self

    def __exit__(self, error_type, error, tb) -> bool:
        swallow, exit_code = False, None
        if error is None:
            self.data["status"] = "completed"
        elif isinstance(error, DivergedError):
            self.update(status="diverged", error=str(error))
            swallow = True
        elif isinstance(error, (KeyboardInterrupt, SIGTERMException)):
            terminated = isinstance(error, SIGTERMException)
            signal_name = "SIGTERM" if terminated else "SIGINT (Ctrl-C)"
            self.update(
                status="interrupted",
                error=f"stopped by {signal_name}; resume=true continues it from its "
                f"last checkpoint" + (f" ({error})" if str(error) else ""),
            )
            exit_code = 128 + (signal.SIGTERM if terminated else signal.SIGINT)
        else:
            self.update(status="failed", error=f"{type(error).__name__}: {error}")
            self.data["traceback"] = "".join(traceback.format_exception(error_type, error, tb))
        self.data["finished_at"] = _now()
        self.write()
        if exit_code is not None:
            raise SystemExit(exit_code) from error
        return swallow
