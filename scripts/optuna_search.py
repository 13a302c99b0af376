"""Search an activation's learning rate, weight decay and batch size with Optuna, on the
validation split (each trial an ordinary actlab run; the study in SQLite, so it resumes).

    python scripts/optuna_search.py hparams_search=optuna activation=relu
    python scripts/optuna_search.py activation=staf hparams_search.n_trials=40 trainer.max_epochs=20

Arguments are `train.py` overrides. Prints the best trial and writes it to <search dir>/best.json.
"""

import json
import sys
from pathlib import Path

from actlab.search import run_search


def main() -> None:
    overrides = sys.argv[1:]
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__)
        return
    if not any(o.startswith("hparams_search=") for o in overrides):
        overrides = ["hparams_search=optuna", *overrides]
    best = run_search(overrides)
    path = Path(best["storage"].removeprefix("sqlite:///")).with_name("best.json")
    path.write_text(json.dumps(best, indent=2) + "\n")
    print(json.dumps(best, indent=2))


if __name__ == "__main__":
    main()
