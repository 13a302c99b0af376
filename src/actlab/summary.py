"""Summaries of a sweep, read from its runs' ``metrics.json`` records (never TensorBoard).

Library side of ``scripts/summarize.py``: a CSV and a Markdown table with one row per setting
the sweep varies (mean ± std over seeds), an accuracy heat-map and learning curves. Works on
partial sweeps: every record found counts, whatever its status.

A row is an activation at a depth, split further by every other key the sweep varies (a
learning rate, a batch size, ...; :func:`varying_keys`), or by the keys a caller names
(``by``). Seeds are what a row aggregates over, never a key of its own.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actlab.comparison import P_VS_BEST_TEST, mean_confidence_interval, p_values_vs_best
from actlab.record import LOST, RECORD_FILE, STATUSES, effective_status, read_record

METRICS = ("test/acc", "test/f1", "test/loss", "dead/overall", "epoch_time_s", "best_epoch")
# the gradient flow of a run (actlab.callbacks.GradientFlow): log10 of its first hidden layer's
# weight-gradient norm over its last's, at the first step and over its best epoch; and the mean
# share of saturated units of its hidden layers at its best epoch (bounded activations only)
GRAD_RATIO, GRAD_RATIO_BEST, SATURATED = "grad_ratio", "grad_ratio_best_epoch", "saturated"
FLOW_METRICS = (GRAD_RATIO, GRAD_RATIO_BEST, SATURATED)
# a packed run's share of its pack's epoch (the pack's epoch / the members it computed), a single run's epoch
EPOCH_PER_MODEL = "epoch_s_per_model"
# a metrics.json that does not parse (a damaged file): counted and named, never a crash
UNREADABLE = "unreadable"
# what a summary counts: the written statuses, `lost` for running records gone silent, and unreadable ones
REPORTED_STATUSES = (*STATUSES, LOST, UNREADABLE)
# every row has these: the activation (its config group's choice) and the depth
BASE_KEYS = ("activation", "model.depth")
# keys that say where or how a run ran, not what it is (as the sweep's job-directory names leave
# them out), and `seed`, which a row aggregates over: never a key that varying_keys finds
NOT_SETTINGS = ("seed", "resume", "threads", "experiment", "debug", "trainer", "trainer.accelerator",
                "data.data_dir", "data.system_dir", "data.download")  # fmt: skip
NOT_SETTING_PREFIXES = ("paths.", "hydra.")

Setting = tuple[tuple[str, Any], ...]


@dataclass
class Group:
    """The runs of one row: an activation at a depth, with one value of each extra key
    (``setting``: ``(("optimizer.lr", 0.1),)``; empty when the sweep varies nothing else)."""

    activation: str
    depth: int
    setting: Setting = ()
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int, Setting]:
        return self.activation, self.depth, self.setting

    def count(self, status: str) -> int:
        return sum(r.get("status") == status for r in self.runs)

    def values(self, metric: str) -> list[float]:
        """``metric`` over the completed runs that have it."""
        out = []
        for r in self.runs:
            value = r.get(metric)
            if metric == EPOCH_PER_MODEL:
                value = r.get("epoch_time_per_member_s") or r.get("epoch_time_s")
            elif metric in FLOW_METRICS:
                value = flow_value(r, metric)
            if r.get("status") == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
                out.append(float(value))
        return out

    @property
    def setting_text(self) -> str:
        """``optimizer.lr=0.1, data.batch_size=128``; empty without extra keys."""
        return ", ".join(f"{key}={show_value(value)}" for key, value in self.setting)

    @property
    def name(self) -> str:
        """The activation and its setting, without the depth: ``relu (optimizer.lr=0.1)``."""
        return f"{self.activation} ({self.setting_text})" if self.setting else self.activation

    @property
    def label(self) -> str:
        """``relu (depth 4, optimizer.lr=0.1)``."""
        return f"{self.activation} (depth {self.depth}" + (f", {self.setting_text})" if self.setting else ")")

    def learning_rates(self) -> str:
        """The runs' ``optimizer.lr`` values (what a fair protocol chose per activation)."""
        rates = sorted({float(((r.get("config") or {}).get("optimizer") or {}).get("lr", math.nan)) for r in self.runs})
        return ", ".join(f"{lr:g}" for lr in rates if math.isfinite(lr)) or "—"

    def mean_std(self, metric: str) -> tuple[float | None, float | None]:
        """Mean and sample standard deviation (n-1); std is None for a single run."""
        values = self.values(metric)
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)

    def confidence_interval(self, metric: str = "test/acc") -> float | None:
        """Half-width of the 95% confidence interval of ``metric``'s mean."""
        return mean_confidence_interval(self.values(metric))


def log10_ratio(first: float | None, last: float | None) -> float | None:
    """``log10(first / last)``: how many orders of magnitude the first hidden layer's gradient
    is below (negative) or above the last's; None where either is missing or not positive."""
    if not first or not last or not math.isfinite(first) or not math.isfinite(last) or first <= 0 or last <= 0:
        return None
    return math.log10(first / last)


def layer_series(record: dict[str, Any], name: str, epoch: int | None) -> list[float | None]:
    """``flow/<name>/layer_i`` of every hidden layer at ``epoch`` of a record's history."""
    history = record.get("history") or {}
    keys = sorted((k for k in history if k.startswith(f"flow/{name}/layer_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    values = [history[k][epoch] if epoch is not None and epoch < len(history[k]) else None for k in keys]
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]


def flow_value(record: dict[str, Any], metric: str) -> float | None:
    """A record's :data:`FLOW_METRICS` value (None where it has no gradient flow)."""
    if metric == GRAD_RATIO:
        norms = record.get("flow/grad_norm_first_step") or []
        return log10_ratio(norms[0], norms[-1]) if len(norms) > 1 else None
    epoch = record.get("best_epoch")
    if metric == GRAD_RATIO_BEST:
        norms = layer_series(record, "grad_norm", epoch)
        return log10_ratio(norms[0], norms[-1]) if len(norms) > 1 else None
    shares = [v for v in layer_series(record, "saturated", epoch) if v is not None]
    return statistics.fmean(shares) if shares else None


def p_vs_best(groups: list[Group]) -> dict[tuple[str, int, Setting], float | str | None]:
    """Per row (:attr:`Group.key`): "best" for the best mean test accuracy among the rows it is
    compared with, else the corrected p-value of its test against that best (see
    :data:`P_VS_BEST_TEST`).

    A row is compared with the rows of the same depth and the same values of every other key
    the rows are grouped by (the same learning rate, batch size, ...): the activations under
    equal conditions. A test across rows of different rates would measure the rate as much as
    the activation, and a family mixing them would correct each activation's test for
    comparisons that are not about activations. Rows that differ in rate or batch size are
    compared by their 95% CIs, not by this column."""
    conditions: dict[tuple[int, Setting], dict[str, list[float]]] = defaultdict(dict)
    for g in groups:
        conditions[(g.depth, g.setting)][g.activation] = g.values("test/acc")
    cells: dict[tuple[str, int, Setting], float | str | None] = {}
    for (depth, setting), samples in sorted(conditions.items(), key=lambda item: _order(item[0])):
        best, p_values = p_values_vs_best(samples)
        cells.update({(activation, depth, setting): p for activation, p in p_values.items()})
        if best is not None:
            cells[(best, depth, setting)] = "best"
    return cells


def load_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every run record below ``sweep_dir`` (job dirs at any depth), with a stale ``running``
    status reported as ``lost``, and a record that does not parse as status ``unreadable``."""
    runs = []
    for path in sorted(Path(sweep_dir).rglob(RECORD_FILE)):
        record = read_record(path.parent)
        if not isinstance(record, dict):
            runs.append({"status": UNREADABLE, "output_dir": str(path.parent), "error": f"{path} does not parse"})
            continue
        record.setdefault("output_dir", str(path.parent))
        record["status"] = effective_status(record)
        runs.append(record)
    return runs


def unfinished(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run that did not complete (diverged ones too): its directory, status and
    the last line of its error."""
    lines = []
    for r in runs:
        if r.get("status") != "completed":
            error = str(r.get("error") or "").strip().splitlines()
            lines.append(f"- `{Path(str(r.get('output_dir'))).name}`: {r.get('status')}"
                         + (f": {error[-1]}" if error else ""))  # fmt: skip
    return lines


def show_value(value: Any) -> str:
    """A setting's value as an override would write it (``0.1``, ``128``, ``adam``, ``[64, 32]``)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


def _leaves(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A resolved config's leaves by dotted key (a list is one leaf)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _override_values(record: dict[str, Any]) -> dict[str, str]:
    """The record's command-line overrides as key -> value (``+key=`` adds a key; ``~key`` deletes)."""
    out = {}
    for override in record.get("overrides") or []:
        key, sep, value = str(override).partition("=")
        if sep and not key.startswith("~"):
            out[key.lstrip("+")] = value
    return out


def run_settings(record: dict[str, Any]) -> dict[str, Any]:
    """Every key -> value a record was run with: its overrides (a config group's choice, such as
    ``optimizer=adam``, or a key the config does not keep, such as ``+fair_choice=...``), then
    the resolved config's leaves, which win (``1e-3`` and ``0.001`` are one rate). Lists become
    their JSON text, so that a value can be part of a row's key."""
    out: dict[str, Any] = dict(_override_values(record))
    config = record.get("config")
    out.update(_leaves(config) if isinstance(config, dict) else {})
    return {key: json.dumps(value) if isinstance(value, (list, dict)) else value for key, value in out.items()}


def _restates_the_run(record: dict[str, Any], settings: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` only repeats the run's seed or lies in its own directory (a checkpoint
    directory, a logger's save_dir): it changes from run to run without being a setting."""
    if isinstance(value, str):
        run_dirs = {str(record.get("output_dir") or ""), str(settings.get("paths.output_dir") or "")} - {""}
        return any(value == run_dir or value.startswith(f"{run_dir}/") for run_dir in run_dirs)
    return not isinstance(value, bool) and record.get("seed") is not None and value == record.get("seed")


def _candidate_keys(runs: list[dict[str, Any]], settings: list[dict[str, Any]]) -> list[str]:
    """Keys that could tell rows apart: the overrides' (in the order the runs name them), then
    the config's (sorted); not the base keys, nor where/how keys, nor a key whose every value
    restates its run's seed or directory."""
    overridden = list(dict.fromkeys(key for r in runs for key in _override_values(r)))
    configured = sorted({key for s in settings for key in s} - set(overridden))
    keys = []
    for key in overridden + configured:
        if key in BASE_KEYS or key in NOT_SETTINGS or key.startswith(NOT_SETTING_PREFIXES):
            continue
        values = [(r, s, s[key]) for r, s in zip(runs, settings) if s.get(key) is not None]
        if values and all(_restates_the_run(*value) for value in values):
            continue
        keys.append(key)
    return keys


def _cell(record: dict[str, Any]) -> tuple[str, int]:
    return str(record.get("activation")), int(record.get("depth") or _configured_depth(record) or 0)


def _setting_of(settings: dict[str, Any], keys: Sequence[str]) -> Setting:
    return tuple((key, settings.get(key)) for key in keys)


def varying_keys(runs: list[dict[str, Any]]) -> list[str]:
    """The keys besides activation and depth that tell this sweep's runs apart, so that the
    runs of a row differ only in seed: a key counts if the runs of one row so far (same
    activation, depth and keys found before it) have two values of it. So
    ``optimizer.lr=0.01,0.1`` gives ``["optimizer.lr"]``; a rate chosen per activation (the
    fair protocol's) splits no row and gives none; ``optimizer=sgd,adam`` gives
    ``["optimizer"]``, after which the config's ``optimizer._target_`` splits nothing. Keys of
    where and how a run ran (:data:`NOT_SETTINGS`, ``paths.*``) and values that restate a run's
    seed or directory are no setting; a run without a value for a key (no config) splits nothing."""
    settings = [run_settings(r) for r in runs]
    keys: list[str] = []
    for key in _candidate_keys(runs, settings):
        seen: dict[tuple, set] = defaultdict(set)
        for r, s in zip(runs, settings):
            if s.get(key) is not None:
                seen[(_cell(r), _setting_of(s, keys))].add(s[key])
        if any(len(values) > 1 for values in seen.values()):
            keys.append(key)
    return keys


def check_keys(runs: list[dict[str, Any]], by: Sequence[str]) -> list[str]:
    """``by`` without the base keys (every row has them); a key no run has is refused, with the
    keys the sweep varies."""
    known = {key for r in runs for key, value in run_settings(r).items() if value is not None}
    for key in by:
        if key not in BASE_KEYS and key not in known:
            varying = ", ".join(varying_keys(runs)) or "nothing besides activation and depth"
            raise ValueError(f"no run has the key {key!r} to group by (a dotted config key such as optimizer.lr, "
                             f"or an override's key); this sweep varies: {varying}")  # fmt: skip
    return [key for key in dict.fromkeys(by) if key not in BASE_KEYS]


def group_runs(runs: list[dict[str, Any]], by: Sequence[str] | None = None) -> list[Group]:
    """The runs by activation, depth and the extra keys ``by`` (default: :func:`varying_keys`),
    sorted by activation, depth and then the keys' values (numbers in order)."""
    return _grouped(runs, varying_keys(runs) if by is None else check_keys(runs, by))


def _grouped(runs: list[dict[str, Any]], keys: Sequence[str]) -> list[Group]:
    groups: dict[tuple[str, int, Setting], Group] = {}
    for r in runs:
        key = (*_cell(r), _setting_of(run_settings(r), keys))
        groups.setdefault(key, Group(*key)).runs.append(r)
    return [groups[k] for k in sorted(groups, key=_order)]


def _order(key: Any) -> Any:
    """A sort key for mixed values: numbers in order, then text, then missing values."""
    if isinstance(key, tuple):
        return tuple(_order(part) for part in key)
    if key is None:
        return (2, 0, "")
    if isinstance(key, (int, float)):
        return (0, key, "")
    return (1, 0, str(key))


def _configured_depth(record: dict[str, Any]) -> int | None:
    # a run that failed before building its model has no depth; its resolved config says it
    model = (record.get("config") or {}).get("model") or {}
    shape = model.get("hidden_shape")
    depth = len(shape) if isinstance(shape, list) else model.get("depth")
    return depth if isinstance(depth, int) else None


def _fmt(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None:
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def _number(value: float | str | None) -> str:
    return "" if value is None else value if isinstance(value, str) else f"{value:.6g}"


def write_csv(groups: list[Group], path: Path) -> Path:
    """One row per group: activation, depth, one column per extra key, then counts and metrics."""
    keys = [key for key, _ in groups[0].setting] if groups else []
    columns = ["activation", "depth", *keys, "runs", *REPORTED_STATUSES]
    for metric in (*METRICS, EPOCH_PER_MODEL, *FLOW_METRICS):
        columns += [f"{metric}_mean", f"{metric}_std"]
    columns += ["test/acc_ci95", "test/acc_p_vs_best"]
    p_values = p_vs_best(groups)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for g in groups:
            setting = ["" if value is None else show_value(value) for _, value in g.setting]
            row: list[Any] = [g.activation, g.depth, *setting, len(g.runs),
                              *(g.count(s) for s in REPORTED_STATUSES)]  # fmt: skip
            for metric in (*METRICS, EPOCH_PER_MODEL, *FLOW_METRICS):
                row += [_number(value) for value in g.mean_std(metric)]
            row += [_number(g.confidence_interval()), _number(p_values.get(g.key))]
            writer.writerow(row)
    return path


def _p_cell(p: float | str | None) -> str:
    if p is None or isinstance(p, str):
        return p or "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(groups: list[Group], baseline: dict[tuple[str, int, Setting], Group] | None = None) -> str:
    """One row per group (activation, depth and a column per extra key); with a ``baseline``
    sweep's groups (by :attr:`Group.key`), its test accuracy beside each row (e.g. the
    textbook protocol's number beside the fair protocol's)."""
    keys = [key for key, _ in groups[0].setting] if groups else []
    header = (
        "| activation | depth | " + "".join(f"{key} | " for key in keys)
        + "test acc (%) | 95% CI | p vs best | test loss | dead (%) | grad ratio | saturated (%) | epoch (s/model) "
        "| completed | failed | diverged | other | lr | best epoch |"
        + (" baseline test acc (%) |" if baseline else "")
        + "\n|---|---:|" + "---:|" * (len(keys) + 14)
        + ("---:|" if baseline else "")
        + "\n"
    )  # fmt: skip
    p_values = p_vs_best(groups)
    rows = []
    for g in groups:
        other = len(g.runs) - g.count("completed") - g.count("failed") - g.count("diverged")
        ci = g.confidence_interval()
        rows.append(
            f"| {g.activation} | {g.depth} | " + "".join(f"{show_value(value)} | " for _, value in g.setting)
            + f"{_fmt(*g.mean_std('test/acc'), scale=100)} "
            f"| {'—' if ci is None else f'± {100 * ci:.2f}'} | {_p_cell(p_values.get(g.key))} "
            f"| {_fmt(*g.mean_std('test/loss'), digits=3)} | {_fmt(*g.mean_std('dead/overall'), scale=100, digits=1)} "
            f"| {_fmt(*g.mean_std(GRAD_RATIO))} | {_fmt(*g.mean_std(SATURATED), scale=100, digits=1)} "
            f"| {_fmt(*g.mean_std(EPOCH_PER_MODEL))} | {g.count('completed')} | {g.count('failed')} "
            f"| {g.count('diverged')} | {other} | {g.learning_rates()} | {_fmt(*g.mean_std('best_epoch'), digits=1)} |"
            + (f" {_baseline_cell(baseline, g)} |" if baseline else "")
        )  # fmt: skip
    notes = (
        "\ntest acc: mean ± standard deviation over seeds; 95% CI: half-width of the 95% confidence interval of "
        f"that mean (Student's t); p vs best: {P_VS_BEST_TEST}. epoch (s/model): a single run's median epoch; a "
        "packed run's share of its pack's epoch (the pack's epoch / the members it computed). grad ratio: log10 of "
        "the first hidden layer's weight-gradient norm over the last's at the first training step (-2: the "
        "input's side gets a hundredth); saturated: the share of the hidden units' outputs where a bounded "
        "activation's slope is below 5 % of its steepest, at the best epoch (— for unbounded ones).\n"
    )
    return header + "\n".join(rows) + "\n" + notes


def plot_heatmap(groups: list[Group], path: Path) -> Path:
    from actlab.plotting import plot_heatmap as draw

    names = list(dict.fromkeys(g.name for g in sorted(groups, key=lambda g: _order((g.activation, g.setting)))))
    depths = sorted({g.depth for g in groups})
    cells = {(g.name, g.depth): g.mean_std("test/acc")[0] for g in groups}
    percent = [[math.nan if cells.get((n, d)) is None else 100 * cells[(n, d)] for d in depths] for n in names]
    return draw(names, depths, percent, path)


def _baseline_cell(baseline: dict[tuple[str, int, Setting], Group], group: Group) -> str:
    other = baseline.get(group.key)
    return _fmt(*other.mean_std("test/acc"), scale=100) if other else "—"


def _curve_label(groups: list[Group], group: Group) -> str:
    return group.name if len({g.depth for g in groups}) == 1 else group.label


def _curves(groups: list[Group], metric: str) -> dict[str, list[list[float]]]:
    curves = {}
    for g in groups:
        seeds = [r["history"][metric] for r in g.runs if (r.get("history") or {}).get(metric)]
        if seeds:
            curves[_curve_label(groups, g)] = seeds
    return curves


def plot_overlaid_curves(groups: list[Group], path: Path, metric: str = "val/acc") -> Path:
    from actlab.plotting import plot_overlaid_curves as draw

    return draw(_curves(groups, metric), metric, path)


def plot_accuracy_bars(groups: list[Group], path: Path,
                       baseline: dict[tuple[str, int, Setting], Group] | None = None) -> Path:  # fmt: skip
    from actlab.plotting import plot_accuracy_bars as draw

    rows, marks = [], {}
    for g in groups:
        mean, std = g.mean_std("test/acc")
        if mean is None:
            continue
        label = _curve_label(groups, g)
        rows.append((label, 100 * mean, None if std is None else 100 * std))
        other = (baseline or {}).get(g.key)
        if other is not None and other.mean_std("test/acc")[0] is not None:
            marks[label] = 100 * other.mean_std("test/acc")[0]
    return draw(rows, path, marks or None)


def plot_learning_curves(groups: list[Group], path: Path, metric: str = "val/acc") -> Path:
    """A panel per activation (and setting of the extra keys), a line per depth."""
    from actlab.plotting import plot_learning_curves as draw

    curves: dict[str, dict[int, list[list[float]]]] = defaultdict(dict)
    for g in groups:
        seeds = [r["history"][metric] for r in g.runs if (r.get("history") or {}).get(metric)]
        if seeds:
            curves[g.name][g.depth] = seeds
    return draw(curves, metric, path)


def plot_accuracy_by_depth(groups: list[Group], path: Path) -> Path:
    """A line per activation (and setting of the extra keys) across depths."""
    from actlab.plotting import plot_accuracy_by_depth as draw

    series: dict[str, list[tuple[int, float, float | None]]] = defaultdict(list)
    for g in groups:
        mean, ci = g.mean_std("test/acc")[0], g.confidence_interval()
        if mean is not None:
            series[g.name].append((g.depth, 100 * mean, None if ci is None else 100 * ci))
    return draw(series, path)


def plot_gradient_flow(groups: list[Group], path: Path) -> Path | None:
    """Per depth, weight-gradient norm against hidden layer for each activation (and setting),
    at the first step and over the best epoch: the mean over a row's completed runs."""
    from actlab.plotting import plot_gradient_flow as draw

    panels: dict[str, dict[str, list[float]]] = {}
    for depth in sorted({g.depth for g in groups}):
        for when in ("first step", "best epoch"):
            lines = {}
            for g in (g for g in groups if g.depth == depth):
                per_run = [r.get("flow/grad_norm_first_step") if when == "first step"
                           else layer_series(r, "grad_norm", r.get("best_epoch"))
                           for r in g.runs if r.get("status") == "completed"]  # fmt: skip
                per_run = [norms for norms in per_run if norms and all(v is not None for v in norms)]
                if per_run:
                    lines[g.name] = [statistics.fmean(layer) for layer in zip(*per_run)]
            if lines:
                panels[f"depth {depth}, {when}"] = lines
    return draw(panels, path) if panels else None


def summarize(sweep_dir: str | Path, out_dir: str | Path | None = None, baseline_dir: str | Path | None = None,
              by: Sequence[str] | None = None) -> list[Path]:  # fmt: skip
    """Write summary.csv, summary.md, accuracy_heatmap.png, test_accuracy.png (sorted, with
    error bars), learning_curves.png (a panel per activation) and
    learning_curves_overlaid.png (every group on shared axes, mean ± std bands), and with
    several depths test_accuracy_by_depth.png (mean and 95% CI per activation); with the
    gradient-flow diagnostic, gradient_flow.png (gradient norm against layer per depth).

    Rows group the runs by activation, depth and every other key the sweep varies
    (:func:`varying_keys`: an lr sweep gives a row per rate), or with ``by`` by activation,
    depth and those keys only (dotted config keys; ``[]``: activation and depth only). A row
    aggregates its seeds. With a ``baseline_dir`` sweep, grouped by the same keys, its test
    accuracies stand beside this one's. summary.md names every run that did not complete
    (diverged ones too) with its status and error's last line."""
    runs = load_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no {RECORD_FILE} found below {sweep_dir}; is it a sweep directory?")
    readable = [r for r in runs if r["status"] != UNREADABLE]
    keys = varying_keys(readable) if by is None else check_keys(readable, by)
    groups = _grouped(readable, keys)
    baseline = None
    if baseline_dir is not None:
        others = [r for r in load_runs(baseline_dir) if r["status"] != UNREADABLE]
        baseline = {g.key: g for g in _grouped(others, keys)}
    out = Path(out_dir or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    statuses = ", ".join(f"{sum(r.get('status') == s for r in runs)} {s}" for s in REPORTED_STATUSES)
    markdown = f"# Sweep summary: {Path(sweep_dir).name}\n\n{len(runs)} runs: {statuses}.\n\n"
    markdown += markdown_table(groups, baseline)
    if unfinished(runs):
        markdown += "\nRuns that did not complete:\n\n" + "\n".join(unfinished(runs)) + "\n"
    (out / "summary.md").write_text(markdown)
    written = [write_csv(groups, out / "summary.csv"), out / "summary.md"]
    if any(g.values("test/acc") for g in groups):  # figures of what there is to draw
        written += [plot_heatmap(groups, out / "accuracy_heatmap.png"),
                    plot_accuracy_bars(groups, out / "test_accuracy.png", baseline)]  # fmt: skip
        if len({g.depth for g in groups if g.values("test/acc")}) > 1:
            written.append(plot_accuracy_by_depth(groups, out / "test_accuracy_by_depth.png"))
    if (flow := plot_gradient_flow(groups, out / "gradient_flow.png")) is not None:
        written.append(flow)
    if _curves(groups, "val/acc"):
        written += [plot_learning_curves(groups, out / "learning_curves.png"),
                    plot_overlaid_curves(groups, out / "learning_curves_overlaid.png")]  # fmt: skip
    return written
