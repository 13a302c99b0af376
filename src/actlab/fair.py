"""The fair-comparison protocol's decision: each activation's learning rate, chosen on the
validation split of a learning-rate search (``experiment=fair_lr_search``), never on test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actlab.summary import load_runs


def choose_learning_rates(search_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per activation, the ``optimizer.lr`` whose run reached the best ``val/acc_best``
    (ties: the smaller rate), with that score and every rate tried. Only completed runs
    count; an activation none of whose runs completed is left out."""
    tried: dict[str, dict[float, float]] = {}
    for record in load_runs(search_dir):
        score = record.get("val/acc_best")
        if record.get("status") != "completed" or not isinstance(score, (int, float)):
            continue
        lr = float(record["config"]["optimizer"]["lr"])
        tried.setdefault(record["activation"], {})[lr] = max(score, tried.get(record["activation"], {}).get(lr, -1.0))
    chosen = {}
    for activation, scores in tried.items():
        lr = max(sorted(scores), key=lambda rate: scores[rate])  # sorted: the first (smallest) of equal bests
        chosen[activation] = {"lr": lr, "val/acc_best": scores[lr], "tried": dict(sorted(scores.items()))}
    return dict(sorted(chosen.items()))
