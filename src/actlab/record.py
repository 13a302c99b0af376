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
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from actlab.errors import DivergedError

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
    "num_parameters": None, "accelerator": None, "resumed_from": None, "epochs_completed": 0,
    "epoch_times_s": [], "epoch_time_s": None, "diagnostics_epoch_s": [], "history": {}, "val/acc_last": None,
    "val/acc_best": None, "best_epoch": None, "stopped_epoch": None, "stop_reason": None,
    "partial_epochs": [], "test_ckpt": None, "test/acc": None,
    "test/loss": None, "fit_time_s": None,
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
    history kept; a record the run closed itself is left as it is. Returns the record."""
    previous = read_record(output_dir)
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
        self.data: dict[str, Any] = {**SCHEMA_DEFAULTS, "status": "running", "output_dir": str(self.output_dir)}
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
            self.update(status="interrupted", error=f"{type(error).__name__}: {error}")
            exit_code = 128 + (signal.SIGTERM if isinstance(error, SIGTERMException) else signal.SIGINT)
        else:
            self.update(status="failed", error=f"{type(error).__name__}: {error}")
            self.data["traceback"] = "".join(traceback.format_exception(error_type, error, tb))
        self.data["finished_at"] = _now()
        self.write()
        if exit_code is not None:
            raise SystemExit(exit_code) from error
        return swallow
