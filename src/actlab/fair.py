"""The fair-comparison protocol's decisions: each activation's learning rate, chosen on the
validation split of a learning-rate search (``experiment=fair_lr_search``), never on test,
and the rates still to try while a choice sits on the edge of what was tried."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from actlab.callbacks.rate_halving import surviving_rates
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
        if accuracy is None or accuracy != accuracy:  # an epoch not validated (null in the record, or NaN)
            continue
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


# per (depth, activation), each rate's mean full-budget score over its seeds
Means = dict[tuple[int, str], dict[float, float]]


def _full_means(search_dir: str | Path) -> Means:
    """Per (depth, activation), each rate's mean full-budget score over its seeds."""
    scores, _ = search_scores(search_dir)
    return {(depth, activation): {lr: statistics.fmean(values) for lr, values in by_rate.items()}
            for depth, activations in scores.items() for activation, by_rate in activations.items()}  # fmt: skip


def _regrets(full: dict[int, dict[str, dict[str, Any]]], means: Means,
             choices: dict[tuple[int, str], float | None]) -> list[float]:  # fmt: skip
    """Per (depth, activation), the validation points a choice loses against the full budget's:
    the full-budget mean score of the full budget's rate minus that of ``choices``'s rate (the
    full budget's whole score where a rule chose nothing)."""
    regrets = []
    for depth, activations in full.items():
        for activation, choice in activations.items():
            mine = means.get((depth, activation), {})
            lr = choices.get((depth, activation))
            regrets.append(100 * (mine[choice["lr"]] - (mine.get(lr, 0.0) if lr is not None else 0.0)))
    return regrets


def _rule_row(full: dict[int, dict[str, dict[str, Any]]], means: Means, choices: dict[tuple[int, str], float | None],
              model_epochs: int, **rule: Any) -> dict[str, Any]:  # fmt: skip
    changed = {f"{depth}/{activation}": (choices.get((depth, activation)), choice["lr"])
               for depth, activations in full.items() for activation, choice in activations.items()
               if choices.get((depth, activation)) != choice["lr"]}  # fmt: skip
    regrets = _regrets(full, means, choices)
    return {**rule, "model_epochs": model_epochs, "changed": changed,
            "regret_mean": statistics.fmean(regrets) if regrets else 0.0,
            "regret_worst": max(regrets, default=0.0)}  # fmt: skip


def budget_check(search_dir: str | Path, budgets: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Whether a shorter stage 1 would have chosen the same rates, measured on a finished
    search: for each ``(max_epochs, patience)``, the model-epochs it would have trained, the
    choices (per depth and activation) that differ from the full budget's, as
    ``"<depth>/<activation>": (its rate, the full budget's rate)``, and their regret: the
    validation points (full-budget mean score) each choice loses, mean and worst."""
    records = [r for r in load_runs(search_dir) if r.get("activation")]
    full, means = choose_learning_rates(search_dir), _full_means(search_dir)
    rows = []
    for budget in budgets:
        shorter = choose_learning_rates(search_dir, budget=budget)
        choices = {(depth, activation): choice["lr"] for depth, activations in shorter.items()
                   for activation, choice in activations.items()}  # fmt: skip
        epochs = sum(_budget_score(r, budget)[1] for r in records)
        rows.append(_rule_row(full, means, choices, epochs, max_epochs=budget[0], patience=budget[1]))
    return rows


def halving_check(search_dir: str | Path, rules: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """Successive halving of the rate grid, replayed on a finished search: for each ``(epoch,
    margin)``, every rate whose seeds' mean best validation accuracy after ``epoch`` epochs
    trails the activation's best rate's by more than ``margin`` points stops there; the others
    train on with the full budget, and the choice is the best of them by full-budget score.
    Per rule: model-epochs, changed choices and regret, as :func:`budget_check` gives them (all
    the rates a search tried count as one grid, its extension rounds included)."""
    records = [r for r in load_runs(search_dir) if r.get("activation") and "lr" in
               ((r.get("config") or {}).get("optimizer") or {})]  # fmt: skip
    full, means = choose_learning_rates(search_dir), _full_means(search_dir)
    rows = []
    for epoch, margin in rules:
        early: dict[tuple[int, str], dict[float, list[float]]] = {}
        for record in records:
            score = _budget_score(record, (epoch, epoch))[0]
            if score is not None:
                key, lr = (_depth(record), record["activation"]), float(record["config"]["optimizer"]["lr"])
                early.setdefault(key, {}).setdefault(lr, []).append(score)
        kept: dict[tuple[int, str], set[float]] = {}
        for key, by_rate in early.items():
            kept[key] = surviving_rates(by_rate, margin)  # the rule a pack applies live (callbacks.rate_halving)
        choices = {}
        for key, by_rate in means.items():
            survivors = {lr: mean for lr, mean in by_rate.items() if lr in kept.get(key, set())}
            choices[key] = max(sorted(survivors), key=survivors.get) if survivors else None
        epochs = 0
        for record in records:
            trained = len((record.get("history") or {}).get("val/acc") or [])
            lr = float(record["config"]["optimizer"]["lr"])
            epochs += trained if lr in kept.get((_depth(record), record["activation"]), set()) else min(epoch, trained)
        rows.append(_rule_row(full, means, choices, epochs, epoch=epoch, margin=margin))
    return rows
