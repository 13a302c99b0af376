"""Summarise a finished (or partial) sweep from its runs' metrics.json records.

python scripts/summarize.py outputs/multirun/<sweep>            # writes into the sweep dir
python scripts/summarize.py outputs/multirun/<sweep> --out docs/
"""

import argparse
from pathlib import Path

from actlab.summary import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep dir)")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another sweep whose test accuracy to show beside this one's (e.g. the textbook protocol)",
    )
    args = parser.parse_args()
    for path in summarize(args.sweep_dir, args.out, args.baseline):
        print(path)
    print((args.out or args.sweep_dir).joinpath("summary.md").read_text())


if __name__ == "__main__":
    main()
