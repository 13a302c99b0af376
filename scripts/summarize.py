"""Summarise a finished (or partial) sweep from its runs' metrics.json records.

python scripts/summarize.py outputs/multirun/<sweep>                    # writes into the sweep dir
python scripts/summarize.py outputs/multirun/<sweep> --out docs/
python scripts/summarize.py outputs/multirun/<sweep> --by optimizer.lr  # rows: activation x depth x rate

Rows are activation x depth x every other key the sweep varies (a learning rate, a batch
size, ...), each row the mean over its seeds; --by names the extra keys instead (--by '' for
activation x depth only).
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
    parser.add_argument(
        "--by",
        default=None,
        metavar="KEY[,KEY...]",
        help="group rows by activation, depth and these dotted config keys (e.g. optimizer.lr), pooling the "
        "others (default: every key the sweep varies; '' for activation and depth only)",
    )
    args = parser.parse_args()
    by = None if args.by is None else [key.strip() for key in args.by.split(",") if key.strip()]
    try:
        written = summarize(args.sweep_dir, args.out, args.baseline, by)
    except ValueError as error:
        raise SystemExit(f"summarize: {error}") from None
    for path in written:
        print(path)
    print((args.out or args.sweep_dir).joinpath("summary.md").read_text())


if __name__ == "__main__":
    main()
