"""Epoch time of actlab's training against the textbook's loop and a minimal hand loop,
measured in one process on the same data, model and device; prints the ratios.

    python scripts/benchmark.py                          # CPU, ReLU, real data
    python scripts/benchmark.py --device cuda --activation staf --versus relu
    python scripts/benchmark.py --activations            # per-activation forward/backward table
"""

import argparse

from actlab.benchmark import activation_speed, benchmark, format_report
from actlab.config import group_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--activation", default="relu", choices=group_options("activation"))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, one timed epoch per loop each")
    parser.add_argument("--steps", type=int, default=None, help="training steps per epoch (default: all)")
    parser.add_argument("--data-dir", default=None, help="first place to look for FashionMNIST")
    parser.add_argument("--system-dir", default=None, help="second place ('none' to skip the Debian copy)")
    parser.add_argument(
        "--versus",
        default=None,
        metavar="ACTIVATION",
        help="also time actlab with this activation, e.g. --activation staf --versus relu",
    )
    parser.add_argument("--skip-reference", action="store_true", help="skip the (slow) textbook loop")
    parser.add_argument("--activations", action="store_true", help="time every activation on a 128x256 batch")
    args = parser.parse_args()
    if args.activations:
        print(f"{'activation':<18} {'forward us':>11} {'fwd+bwd us':>11}  (128x256 batch, {args.device})")
        for name, forward, both in activation_speed(group_options("activation"), args.device):
            print(f"{name:<18} {forward:>11.1f} {both:>11.1f}")
        return
    system_dir = None if args.system_dir is None else ("" if args.system_dir == "none" else args.system_dir)
    timings = benchmark(args.device, args.activation, args.rounds, args.steps, args.data_dir, system_dir,
                        args.skip_reference, args.versus)  # fmt: skip
    print(format_report(timings, args.device, args.activation, args.versus))


if __name__ == "__main__":
    main()
