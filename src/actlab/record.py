"""The run record: ``metrics.json`` in each run's output directory.

One JSON object per run, written when the run starts (``status: running``) and rewritten
when it ends, whatever the ending: ``completed``, ``failed``, ``diverged`` or ``interrupted``.
Sweep summaries read these files, never TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

RECORD_FILE = "metrics.json"
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")


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


def read_record(output_dir: str | Path) -> dict[str, Any] | None:
    """The record of a run directory, or None if it has none or it cannot be parsed."""
    path = Path(output_dir) / RECORD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
