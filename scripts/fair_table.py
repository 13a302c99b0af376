"""The fair comparison in one command: pick each activation's learning rate on validation
(two seeds, the grid extended until the choice is bracketed), then train five seeds at that
rate with early stopping and test the best checkpoint; optionally at several depths.

    python scripts/fair_table.py                                  # depth 4, packed, on this machine
    python scripts/fair_table.py --depths 2,4,8 --out outputs/fair_depth
    python scripts/fair_table.py --floor-s 0.48                   # + the protocol's efficiency
    python scripts/fair_table.py -- trainer=gpu                   # extra overrides for every run
    python scripts/fair_table.py --out outputs/fair --check-budgets 10:3,15:4   # would less stage 1 do?
    python scripts/fair_table.py --out outputs/fair --check-halving 3:1,5:2    # successive halving's regret

Stage 1: `train.py -m experiment=fair_lr_search` (activation x depth x lr grid, seeds 101 and
102, stage 2's epoch budget and early stopping; after one epoch, the rates trailing their
activation's best by more than 0.5 val points stop: successive halving, off with
--full-budget), then a sweep per round with one more rate past
every choice that sits on the edge of its grid, until every choice is interior or capped
(`chosen_lr.json` says which). Stage 2: one `train.py -m experiment=fair_table` sweep of every
(activation, depth) at its chosen rate, seeds 1-5; then `summarize.py` on stage 2 (95% CIs,
tests against the best; with --baseline, a textbook-protocol sweep's numbers beside it).

A sweep gives each activation its own rate through generated `fair_choice` configs (an
activation, a depth, a rate each; `<out>/choices/`), so jobs differing only in activation, seed
and rate share packs. Everything resumes where it stopped.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from actlab.fair import MAX_RATE, MIN_RATE, budget_check, choose_learning_rates, halving_check, rates_to_extend
from actlab.summary import load_runs, summarize

TRAIN = Path(__file__).resolve().parents[1] / "train.py"


def sweep(overrides: list[str], sweep_dir: Path, launcher: str, extra: list[str]) -> None:
    command = [sys.executable, str(TRAIN), "-m", *overrides, f"hydra/launcher={launcher}",
               f"hydra.sweep.dir={sweep_dir}", "resume=true", *extra]  # fmt: skip
    print("+", " ".join(command[1:]), flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        print(f"fair_table: a run of {sweep_dir} did not complete (see its records); going on", flush=True)


def choices(directory: Path, runs: dict[str, tuple[str, int, float]]) -> list[str]:
    """Write one `fair_choice` config per name -> (activation, depth, rate) below ``directory``
    (a Hydra search path): `+fair_choice=<name>` trains that activation at that depth and rate."""
    group = directory / "fair_choice"
    group.mkdir(parents=True, exist_ok=True)
    for name, (activation, depth, rate) in runs.items():
        (group / f"{name}.yaml").write_text(
            "# @package _global_\n# written by scripts/fair_table.py\n"
            f"defaults:\n  - override /activation: {activation}\nmodel:\n  depth: {depth}\noptimizer:\n  lr: {rate}\n"
        )
    return [f"+fair_choice={','.join(runs)}", f"hydra.searchpath=[file://{directory.resolve()}]",
            "hydra.sweeper.params=null"]  # fmt: skip


def search(args: argparse.Namespace) -> dict:
    """Stage 1, extended round by round until no choice sits on an open edge of its grid."""
    budget = ["callbacks.rate_halving=null"] if args.full_budget else []  # default: halving after one epoch
    grid = ["experiment=fair_lr_search", f"model.depth={args.depths}", f"seed={args.search_seeds}", *budget]
    grid += [f"activation={args.activations}"] if args.activations else []
    grid += [f"optimizer.lr={args.rates}"] if args.rates else []
    sweep(grid, args.out / "lr_search" / "grid", args.launcher, args.extra)
    for round_ in range(1, args.max_rounds + 1):
        chosen = choose_learning_rates(args.out / "lr_search", args.min_rate, args.max_rate)
        todo = rates_to_extend(chosen)
        if not todo:
            break
        runs = {}
        for (depth, rate), activations in todo.items():
            print(f"fair_table: depth {depth}, {','.join(activations)} chose the edge of the grid: trying lr {rate:g}")
            runs.update({f"{a}_depth{depth}_lr{rate:g}": (a, depth, rate) for a in activations})
        overrides = choices(args.out / "choices" / f"round{round_}", runs)
        sweep(["experiment=fair_lr_search", *overrides, f"seed={args.search_seeds}", *budget],
              args.out / "lr_search" / f"round{round_}", args.launcher, args.extra)  # fmt: skip
    return choose_learning_rates(args.out / "lr_search", args.min_rate, args.max_rate)


def epochs_trained(sweep_dir: Path) -> int:
    return sum(int(r.get("epochs_completed") or 0) for r in load_runs(sweep_dir))


def _pairs(text: str, option: str, kinds: tuple[type, type], example: str) -> list[tuple]:
    try:
        pairs = [tuple(kind(n) for kind, n in zip(kinds, item.split(":"), strict=True)) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(pair[0] <= 0 or min(pair) < 0 for pair in pairs):  # a margin of 0: only the best goes on
        raise SystemExit(f"fair_table: {option} wants {example}, got {text!r}")
    return pairs


def rules_report(search_dir: Path, budgets: str | None = None, halving: str | None = None) -> str:
    """The table of :func:`actlab.fair.budget_check` for ``budgets`` (``"epochs:patience,..."``)
    and of :func:`actlab.fair.halving_check` for ``halving`` (``"epoch:margin,..."``): each
    rule's model-epochs, the choices it changes and their regret (validation points lost)."""
    pairs = _pairs(budgets, "--check-budgets", (int, int), "EPOCHS:PATIENCE pairs (e.g. 10:3,15:4)") if budgets else []
    rules = _pairs(halving, "--check-halving", (int, float), "EPOCH:MARGIN pairs (e.g. 5:1,5:2)") if halving else []
    if not load_runs(search_dir):
        raise SystemExit(f"fair_table: no stage-1 runs in {search_dir}")
    full = epochs_trained(search_dir)
    lines = [f"stage 1 as run: {full} model-epochs ({search_dir})", "",
             "| rule | model-epochs | share | regret: mean | worst (val points) | choices that change |",
             "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    named = [(f"{r['max_epochs']} epochs, patience {r['patience']}", r) for r in budget_check(search_dir, pairs)]
    named += [(f"halving after {r['epoch']} epochs, margin {r['margin']:g} points", r)
              for r in halving_check(search_dir, rules)]  # fmt: skip
    for name, row in named:
        changed = ", ".join(f"{key} {mine:g} (not {theirs:g})" if mine else f"{key} none (not {theirs:g})"
                            for key, (mine, theirs) in row["changed"].items()) or "none"  # fmt: skip
        lines.append(f"| {name} | {row['model_epochs']} | {row['model_epochs'] / max(1, full):.0%} | "
                     f"{row['regret_mean']:.2f} | {row['regret_worst']:.2f} | {changed} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/fair"), help="where both stages write")
    parser.add_argument("--launcher", default="packed", help="hydra/launcher for both stages")
    parser.add_argument("--baseline", type=Path, default=None, help="a textbook-protocol sweep to compare with")
    parser.add_argument("--activations", default=None, help="comma-separated (default: the book table's 14)")
    parser.add_argument("--depths", default="4", help="comma-separated model depths (default 4)")
    parser.add_argument("--rates", default=None, help="comma-separated starting rates (default: 0.01,0.03,0.1)")
    parser.add_argument("--min-rate", type=float, default=MIN_RATE, help="the grid extends no lower")
    parser.add_argument("--max-rate", type=float, default=MAX_RATE, help="the grid extends no higher")
    parser.add_argument("--max-rounds", type=int, default=3, help="rounds of extending the grid at most")
    parser.add_argument("--search-seeds", default="101,102", help="stage 1's seeds (comma-separated)")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="stage 2's seeds (comma-separated)")
    parser.add_argument("--floor-s", type=float, default=None,
                        help="the stacked hand loop's per-model epoch (scripts/benchmark.py --pack), measured the "
                             "same day: prints the protocol's efficiency")  # fmt: skip
    parser.add_argument("--full-budget", action="store_true",
                        help="stage 1 without successive halving: every rate gets stage 2's whole budget (in "
                             "directories of their own: callbacks.rate_halving=null is in their names)")  # fmt: skip
    parser.add_argument("--check-budgets", default=None, metavar="EPOCHS:PATIENCE,...",
                        help="only report, from <out>/lr_search's histories, whether stage 1 with these shorter "
                             "budgets would have chosen the same rates, and its model-epochs")  # fmt: skip
    parser.add_argument("--check-halving", default=None, metavar="EPOCH:MARGIN,...",
                        help="only report, from <out>/lr_search's histories, what successive halving of the rate "
                             "grid (a rate trailing the best by MARGIN val points after EPOCH epochs stops) would "
                             "cost and lose")  # fmt: skip
    parser.add_argument("extra", nargs="*", help="overrides for every run (after --)")
    args = parser.parse_args()
    if args.check_budgets or args.check_halving:
        print(rules_report(args.out / "lr_search", args.check_budgets, args.check_halving))
        return
    start = time.perf_counter()
    chosen = search(args)
    if not chosen:
        raise SystemExit(f"fair_table: no run of {args.out / 'lr_search'} completed; see their metrics.json")
    (args.out / "chosen_lr.json").write_text(json.dumps({str(d): c for d, c in chosen.items()}, indent=2) + "\n")
    searched = time.perf_counter() - start
    runs = {}
    for depth, activations in chosen.items():
        for activation, choice in activations.items():
            runs[f"{activation}_depth{depth}"] = (activation, depth, choice["lr"])
            print(f"depth {depth} {activation:<15} lr {choice['lr']:<6g} val acc {100 * choice['val/acc_best']:.2f}% "
                  f"({choice['seeds']} seeds, {choice['choice']})", flush=True)  # fmt: skip
    overrides = choices(args.out / "choices" / "final", runs)
    sweep(["experiment=fair_table", *overrides, f"seed={args.seeds}"], args.out / "final", args.launcher, args.extra)
    for path in summarize(args.out / "final", args.out, args.baseline):
        print(path)
    print((args.out / "summary.md").read_text())
    wall = time.perf_counter() - start
    epochs = {stage: epochs_trained(args.out / stage) for stage in ("lr_search", "final")}
    print(f"fair_table: {wall:.0f} s in all (stage 1 {searched:.0f} s, stage 2 {wall - searched:.0f} s); "
          f"model-epochs trained: stage 1 {epochs['lr_search']}, stage 2 {epochs['final']}")  # fmt: skip
    if args.floor_s:
        print(f"fair_table: protocol efficiency {sum(epochs.values()) * args.floor_s / wall:.2f} "
              f"(model-epochs x {args.floor_s} s / wall)")  # fmt: skip


if __name__ == "__main__":
    main()
