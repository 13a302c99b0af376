"""The fair comparison in one command: pick each activation's learning rate on validation,
then train three seeds at that rate with early stopping and test the best checkpoint.

    python scripts/fair_table.py                                  # packed, on this machine
    python scripts/fair_table.py --out outputs/fair --launcher local_parallel
    python scripts/fair_table.py -- trainer=gpu                   # extra overrides for every run

Stage 1: `train.py -m experiment=fair_lr_search` (activation x lr grid, one seed, early
stopping); stage 2: one `train.py -m experiment=fair_table` sweep per chosen rate (the
activations that chose it, seeds 1-3); then `summarize.py` on stage 2 (with --baseline, a
textbook-protocol sweep's numbers beside it). Both stages resume where they stopped.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from actlab.fair import choose_learning_rates
from actlab.summary import summarize

TRAIN = Path(__file__).resolve().parents[1] / "train.py"


def sweep(overrides: list[str], sweep_dir: Path, launcher: str, extra: list[str]) -> None:
    command = [sys.executable, str(TRAIN), "-m", *overrides, f"hydra/launcher={launcher}",
               f"hydra.sweep.dir={sweep_dir}", "resume=true", *extra]  # fmt: skip
    print("+", " ".join(command[1:]), flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        print(f"fair_table: a run of {sweep_dir} did not complete (see its records); going on", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/fair"), help="where both stages write")
    parser.add_argument("--launcher", default="packed", help="hydra/launcher for both stages")
    parser.add_argument("--baseline", type=Path, default=None, help="a textbook-protocol sweep to compare with")
    parser.add_argument("--activations", default=None, help="comma-separated (default: the book table's 14)")
    parser.add_argument("--rates", default=None, help="comma-separated learning rates to search (default: 3e-3..0.1)")
    parser.add_argument("extra", nargs="*", help="overrides for every run (after --)")
    args = parser.parse_args()
    start = time.perf_counter()
    search = ["experiment=fair_lr_search"]
    search += [f"activation={args.activations}"] if args.activations else []
    search += [f"optimizer.lr={args.rates}"] if args.rates else []
    sweep(search, args.out / "lr_search", args.launcher, args.extra)
    chosen = choose_learning_rates(args.out / "lr_search")
    if not chosen:
        raise SystemExit(f"fair_table: no run of {args.out / 'lr_search'} completed; see their metrics.json")
    (args.out / "chosen_lr.json").write_text(json.dumps(chosen, indent=2) + "\n")
    by_rate: dict[float, list[str]] = {}
    for activation, choice in chosen.items():
        by_rate.setdefault(choice["lr"], []).append(activation)
        print(f"{activation:<15} lr {choice['lr']:<6g} val acc {100 * choice['val/acc_best']:.2f}%", flush=True)
    for lr, activations in sorted(by_rate.items()):
        sweep(["experiment=fair_table", f"activation={','.join(activations)}", f"optimizer.lr={lr}"],
              args.out / "final" / f"lr_{lr:g}", args.launcher, args.extra)  # fmt: skip
    for path in summarize(args.out / "final", args.out, args.baseline):
        print(path)
    print((args.out / "summary.md").read_text())
    print(f"fair_table: {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
