#!/usr/bin/env bash
# Set up actlab in ./.venv, with FashionMNIST from Debian's dataset-fashion-mnist package.
#   bash scripts/setup.sh          # what training needs
#   bash scripts/setup.sh test     # plus the test tools (pytest, ruff)
# Extras can be combined: `bash scripts/setup.sh test,cluster`.
# Where the dataset cannot be installed it says so; under CI=true it then exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --editable ".${extras:+[$extras]}"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist \
            || missing="could not install dataset-fashion-mnist; see README 'Data'"
    else
        missing="no apt-get here; put the FashionMNIST files in data/ (see README 'Data')"
    fi
    if [ -n "${missing:-}" ]; then
        echo "setup: $missing" >&2
        # CI promises the real-data tests: there a missing dataset is a failed setup, not a smaller suite
        case "${CI:-}" in true | 1) exit 1 ;; esac
    fi
fi
echo "setup: done (.venv)"
