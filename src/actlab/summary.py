"""Summaries of a sweep, read from its runs' ``metrics.json`` records (never TensorBoard).

Library side of ``scripts/summarize.py``: a CSV and a Markdown table of activation x depth
(mean ± std over seeds), an accuracy heat-map and learning curves. Works on partial sweeps:
every record found counts, whatever its status.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actlab.comparison import P_VS_BEST_TEST, mean_confidence_interval, p_values_vs_best
from actlab.record import LOST, RECORD_FILE, STATUSES, effective_status, read_record

METRICS = ("test/acc", "test/f1", "test/loss", "dead/overall", "epoch_time_s", "best_epoch")
# a packed run's share of its pack's epoch (the pack's epoch / the members it computed), a single run's epoch
EPOCH_PER_MODEL = "epoch_s_per_model"
# a metrics.json that does not parse (a damaged file): counted and named, never a crash
UNREADABLE = "unreadable"
# what a summary counts: the written statuses, `lost` for running records gone silent, and unreadable ones
REPORTED_STATUSES = (*STATUSES, LOST, UNREADABLE)


@dataclass
class Group:
    """The runs of one (activation, depth) cell of the grid."""

    activation: str
    depth: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.get("status") == status for r in self.runs)

    def values(self, metric: str) -> list[float]:
        """``metric`` over the completed runs that have it."""
        out = []
        for r in self.runs:
            value = r.get(metric)
            if metric == EPOCH_PER_MODEL:
                value = r.get("epoch_time_per_member_s") or r.get("epoch_time_s")
            if r.get("status") == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
                out.append(float(value))
        return out

    @property
    def label(self) -> str:
        return f"{self.activation} (depth {self.depth})"

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


def p_vs_best(groups: list[Group]) -> dict[tuple[str, int], float | str | None]:
    """Per (activation, depth): "best" for the best mean test accuracy of its depth, else the
    corrected p-value of its test against that best (see :data:`P_VS_BEST_TEST`)."""
    cells: dict[tuple[str, int], float | str | None] = {}
    for depth in sorted({g.depth for g in groups}):
        samples = {g.activation: g.values("test/acc") for g in groups if g.depth == depth}
        best, p_values = p_values_vs_best(samples)
        cells.update({(activation, depth): p for activation, p in p_values.items()})
        if best is not None:
            cells[(best, depth)] = "best"
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


def group_runs(runs: list[dict[str, Any]]) -> list[Group]:
    groups: dict[tuple[str, int], Group] = {}
    for r in runs:
        key = (str(r.get("activation")), int(r.get("depth") or _configured_depth(r) or 0))
        groups.setdefault(key, Group(*key)).runs.append(r)
    return [groups[k] for k in sorted(groups)]


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
    columns = ["activation", "depth", "runs", *REPORTED_STATUSES]
    for metric in (*METRICS, EPOCH_PER_MODEL):
        columns += [f"{metric}_mean", f"{metric}_std"]
    columns += ["test/acc_ci95", "test/acc_p_vs_best"]
    p_values = p_vs_best(groups)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for g in groups:
            row: list[Any] = [g.activation, g.depth, len(g.runs), *(g.count(s) for s in REPORTED_STATUSES)]
            for metric in (*METRICS, EPOCH_PER_MODEL):
                row += [_number(value) for value in g.mean_std(metric)]
            row += [_number(g.confidence_interval()), _number(p_values.get((g.activation, g.depth)))]
            writer.writerow(row)
    return path


def _p_cell(p: float | str | None) -> str:
    if p is None or isinstance(p, str):
        return p or "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(groups: list[Group], baseline: dict[tuple[str, int], Group] | None = None) -> str:
    """One row per (activation, depth); with a ``baseline`` sweep's groups, its test accuracy
    beside each row (e.g. the textbook protocol's number beside the fair protocol's)."""
    header = (
        "| activation | depth | test acc (%) | 95% CI | p vs best | test loss | dead (%) | epoch (s/model) "
        "| completed | failed | diverged | other | lr | best epoch |"
        + (" baseline test acc (%) |" if baseline else "")
        + "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" if baseline else "")
        + "\n"
    )
    p_values = p_vs_best(groups)
    rows = []
    for g in groups:
        other = len(g.runs) - g.count("completed") - g.count("failed") - g.count("diverged")
        ci = g.confidence_interval()
        rows.append(
            f"| {g.activation} | {g.depth} | {_fmt(*g.mean_std('test/acc'), scale=100)} "
            f"| {'—' if ci is None else f'± {100 * ci:.2f}'} | {_p_cell(p_values.get((g.activation, g.depth)))} "
            f"| {_fmt(*g.mean_std('test/loss'), digits=3)} | {_fmt(*g.mean_std('dead/overall'), scale=100, digits=1)} "
            f"| {_fmt(*g.mean_std(EPOCH_PER_MODEL))} | {g.count('completed')} | {g.count('failed')} "
            f"| {g.count('diverged')} | {other} | {g.learning_rates()} | {_fmt(*g.mean_std('best_epoch'), digits=1)} |"
            + (f" {_baseline_cell(baseline, g)} |" if baseline else "")
        )
    notes = (
        "\ntest acc: mean ± standard deviation over seeds; 95% CI: half-width of the 95% confidence interval of "
        f"that mean (Student's t); p vs best: {P_VS_BEST_TEST}. epoch (s/model): a single run's median epoch; a "
        "packed run's share of its pack's epoch (the pack's epoch / the members it computed).\n"
    )
    return header + "\n".join(rows) + "\n" + notes


def plot_heatmap(groups: list[Group], path: Path) -> Path:
    from actlab.plotting import plot_heatmap as draw

    activations = sorted({g.activation for g in groups})
    depths = sorted({g.depth for g in groups})
    cells = {(g.activation, g.depth): g.mean_std("test/acc")[0] for g in groups}
    percent = [[math.nan if cells.get((a, d)) is None else 100 * cells[(a, d)] for d in depths] for a in activations]
    return draw(activations, depths, percent, path)


def _baseline_cell(baseline: dict[tuple[str, int], Group], group: Group) -> str:
    other = baseline.get((group.activation, group.depth))
    return _fmt(*other.mean_std("test/acc"), scale=100) if other else "—"


def _curves(groups: list[Group], metric: str) -> dict[str, list[list[float]]]:
    curves = {}
    for g in groups:
        seeds = [r["history"][metric] for r in g.runs if (r.get("history") or {}).get(metric)]
        if seeds:
            curves[g.activation if len({x.depth for x in groups}) == 1 else g.label] = seeds
    return curves


def plot_overlaid_curves(groups: list[Group], path: Path, metric: str = "val/acc") -> Path:
    from actlab.plotting import plot_overlaid_curves as draw

    return draw(_curves(groups, metric), metric, path)


def plot_accuracy_bars(groups: list[Group], path: Path, baseline: dict[tuple[str, int], Group] | None = None) -> Path:
    from actlab.plotting import plot_accuracy_bars as draw

    one_depth = len({g.depth for g in groups}) == 1
    rows, marks = [], {}
    for g in groups:
        mean, std = g.mean_std("test/acc")
        if mean is None:
            continue
        label = g.activation if one_depth else g.label
        rows.append((label, 100 * mean, None if std is None else 100 * std))
        other = (baseline or {}).get((g.activation, g.depth))
        if other is not None and other.mean_std("test/acc")[0] is not None:
            marks[label] = 100 * other.mean_std("test/acc")[0]
    return draw(rows, path, marks or None)


def plot_learning_curves(groups: list[Group], path: Path, metric: str = "val/acc") -> Path:
    from actlab.plotting import plot_learning_curves as draw

    curves: dict[str, dict[int, list[list[float]]]] = defaultdict(dict)
    for g in groups:
        seeds = [r["history"][metric] for r in g.runs if (r.get("history") or {}).get(metric)]
        if seeds:
            curves[g.activation][g.depth] = seeds
    return draw(curves, metric, path)


def plot_accuracy_by_depth(groups: list[Group], path: Path) -> Path:
    from actlab.plotting import plot_accuracy_by_depth as draw

    series: dict[str, list[tuple[int, float, float | None]]] = defaultdict(list)
    for g in groups:
        mean, ci = g.mean_std("test/acc")[0], g.confidence_interval()
        if mean is not None:
            series[g.activation].append((g.depth, 100 * mean, None if ci is None else 100 * ci))
    return draw(series, path)


def summarize(sweep_dir: str | Path, out_dir: str | Path | None = None,
              baseline_dir: str | Path | None = None) -> list[Path]:  # fmt: skip
    """Write summary.csv, summary.md, accuracy_heatmap.png, test_accuracy.png (sorted, with
    error bars), learning_curves.png (a panel per activation) and
    learning_curves_overlaid.png (every group on shared axes, mean ± std bands), and with
    several depths test_accuracy_by_depth.png (mean and 95% CI per activation). With a
    ``baseline_dir`` sweep, its test accuracies stand beside this one's."""
    runs = load_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no {RECORD_FILE} found below {sweep_dir}; is it a sweep directory?")
    groups = group_runs([r for r in runs if r["status"] != UNREADABLE])
    baseline = None
    if baseline_dir is not None:
        baseline = {(g.activation, g.depth): g for g in group_runs(load_runs(baseline_dir))}
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
    if _curves(groups, "val/acc"):
        written += [plot_learning_curves(groups, out / "learning_curves.png"),
                    plot_overlaid_curves(groups, out / "learning_curves_overlaid.png")]  # fmt: skip
    return written
