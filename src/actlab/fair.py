"""The fair-comparison protocol's decisions: each activation's learning rate, chosen on the
validation split of a learning-rate search (``experiment=fair_lr_search``), never on test,
and the rates still to try while a choice sits on the edge of what was tried."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from actlab.summary import load_runs

# the search stops extending a rate grid at these rates
MIN_RATE, MAX_RATE = 1e-4, 1.0


def neighbour_rate(lr: float, direction: int) -> float:
    """The next rate of the half-decade ladder (..., 0.003, 0.01, 0.03, 0.1, 0.3, 1, ...) above
    (``direction`` 1) or below (-1) ``lr``."""
    step = round(2 * math.log10(lr)) + direction
    return float(f"{10 ** (step / 2):.0e}")


def _depth(record: dict[str, Any]) -> int:
    model = (record.get("config") or {}).get("model") or {}
    return int(record.get("depth") or model.get("depth") or 0)


def within_budget(history: list[float], max_epochs: int, patience: int) -> tuple[float | None, int]:
    """What a run whose per-epoch validation accuracies were ``history`` would have reached
    with a budget of ``max_epochs`` and early stopping after ``patience`` epochs without a new
    best (as Lightning's EarlyStopping on val/acc): its best accuracy and the epochs trained."""
    best, best_epoch, trained = None, 0, 0
    for epoch, accuracy in enumerate(history[:max_epochs]):
        trained = epoch + 1
        if best is None or accuracy > best:
            best, best_epoch = accuracy, epoch
        elif epoch - best_epoch >= patience:
            break
    return best, trained


def _budget_score(record: dict[str, Any], budget: tuple[int, int]) -> tuple[float | None, int]:
    """A search run's score and epochs under a shorter ``(max_epochs, patience)`` budget."""
    history = (record.get("history") or {}).get("val/acc") or []
    if record.get("status") == "diverged" and len(history) < budget[0]:
        return 0.0, len(history)  # it diverged within the budget too (its epochs as the record counts them)
    if record.get("status") not in ("completed", "diverged"):
        return None, 0
    return within_budget(history, *budget)


def search_scores(search_dir: str | Path, budget: tuple[int, int] | None = None) -> tuple[dict, dict]:
    """Per depth, per activation, per rate: the ``val/acc_best`` of every seed that completed
    (0 for one that diverged: a rate that diverges is no choice); and per (depth, activation)
    every rate a run was made at, whatever became of it. With ``budget`` (max_epochs,
    patience), the scores the same runs had reached within that shorter budget."""
    scores: dict[int, dict[str, dict[float, list[float]]]] = {}
    attempted: dict[tuple[int, str], set[float]] = {}
    for record in load_runs(search_dir):
        config = record.get("config") or {}
        if "lr" not in (config.get("optimizer") or {}) or not record.get("activation"):
            continue
        lr, depth = float(config["optimizer"]["lr"]), _depth(record)
        attempted.setdefault((depth, record["activation"]), set()).add(lr)
        score = record.get("val/acc_best") if record.get("status") == "completed" else None
        if record.get("status") == "diverged":
            score = 0.0
        if budget is not None:
            score = _budget_score(record, budget)[0]
        if isinstance(score, (int, float)):
            by_rate = scores.setdefault(depth, {}).setdefault(record["activation"], {})
            by_rate.setdefault(lr, []).append(float(score))
    return scores, attempted


def choose_learning_rates(search_dir: str | Path, min_rate: float = MIN_RATE, max_rate: float = MAX_RATE,
                          budget: tuple[int, int] | None = None) -> dict[int, dict[str, dict[str, Any]]]:  # fmt: skip
    """Per depth and activation, the ``optimizer.lr`` whose seeds reached the best mean
    ``val/acc_best`` (ties: the smaller rate), with that mean, the number of seeds, every rate
    tried (mean over its seeds) and where the choice sits: ``interior`` (a worse rate on
    both sides), ``capped`` (on the edge of the grid, at ``min_rate`` or ``max_rate``), or
    ``edge`` (on the edge: the grid should extend, see :func:`rates_to_extend`), or
    ``edge (<rate> did not complete)``. Completed runs count, diverged ones as 0; an
    activation none of whose runs completed is left out. ``budget``: see :func:`search_scores`."""
    scores, attempted = search_scores(search_dir, budget)
    chosen: dict[int, dict[str, dict[str, Any]]] = {}
    for depth, activations in sorted(scores.items()):
        for activation, by_rate in sorted(activations.items()):
            means = {lr: statistics.fmean(values) for lr, values in sorted(by_rate.items())}
            lr = max(means, key=lambda rate: means[rate])  # means are sorted: the smallest of equal bests
            rates = list(means)
            direction = 1 if lr == rates[-1] else -1
            beyond = neighbour_rate(lr, direction)
            if rates[0] < lr < rates[-1]:
                where = "interior"
            elif beyond > max_rate * 1.001 or beyond < min_rate * 0.999:
                where = "capped"
            elif beyond in attempted.get((depth, activation), set()):
                where = f"edge ({beyond:g} did not complete)"
            else:
                where = "edge"
            chosen.setdefault(depth, {})[activation] = {
                "lr": lr, "val/acc_best": means[lr], "seeds": len(by_rate[lr]), "choice": where,
                "tried": {f"{rate:g}": round(mean, 6) for rate, mean in means.items()},
            }  # fmt: skip
    return chosen


def rates_to_extend(chosen: dict[int, dict[str, dict[str, Any]]]) -> dict[tuple[int, float], list[str]]:
    """The next rates to try, as (depth, rate) -> activations: one step past each choice
    that sits on the edge of its grid (up from the top, down from the bottom)."""
    todo: dict[tuple[int, float], list[str]] = {}
    for depth, activations in chosen.items():
        for activation, choice in activations.items():
            if choice["choice"] != "edge":
                continue
            tried = sorted(float(rate) for rate in choice["tried"])
            direction = 1 if choice["lr"] == tried[-1] else -1
            todo.setdefault((depth, neighbour_rate(choice["lr"], direction)), []).append(activation)
    return dict(sorted(todo.items()))


def budget_check(search_dir: str | Path, budgets: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Whether a shorter stage 1 would have chosen the same rates, measured on a finished
    search: for each ``(max_epochs, patience)``, the model-epochs it would have trained and
    the choices (per depth and activation) that differ from the full budget's, as
    ``"<depth>/<activation>": (its rate, the full budget's rate)``."""
    records = [r for r in load_runs(search_dir) if r.get("activation")]
    full = choose_learning_rates(search_dir)
    rows = []
    for budget in budgets:
        shorter = choose_learning_rates(search_dir, budget=budget)
        changed = {
            f"{depth}/{activation}": (shorter.get(depth, {}).get(activation, {}).get("lr"), choice["lr"])
            for depth, activations in full.items()
            for activation, choice in activations.items()
            if shorter.get(depth, {}).get(activation, {}).get("lr") != choice["lr"]
        }
        epochs = sum(_budget_score(r, budget)[1] for r in records)
        rows.append({"max_epochs": budget[0], "patience": budget[1], "model_epochs": epochs, "changed": changed})
    return rows
