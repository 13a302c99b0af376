"""Plot activations: shapes + derivatives grid and the 3-D gradient views.

python scripts/plot_activations.py                      # every activation -> outputs/plots/
python scripts/plot_activations.py relu telu staf --out plots/
"""

import argparse
from pathlib import Path

from actlab.config import group_options
from actlab.plotting import plot_activations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "names", nargs="*", help=f"activations (default: all of {', '.join(group_options('activation'))})"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/plots"), help="output folder")
    parser.add_argument("--no-surfaces", action="store_true", help="skip the per-activation 3-D views")
    args = parser.parse_args()
    for path in plot_activations(args.names or None, args.out, surfaces=not args.no_surfaces):
        print(path)


if __name__ == "__main__":
    main()
