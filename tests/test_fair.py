"""The fair protocol's choices: a learning rate per activation from the mean validation score
of its seeds, and a grid that extends until the choice is bracketed."""

import pytest

from actlab.fair import budget_check, choose_learning_rates, neighbour_rate, rates_to_extend, within_budget
from actlab.record import write_record


def search_run(root, activation, lr, seed, score, status="completed", depth=4, history=None):
    write_record(root / f"{activation}-{lr}-{seed}-{depth}", {
        "status": status, "activation": activation, "depth": depth, "seed": seed, "val/acc_best": score,
        "config": {"optimizer": {"lr": lr}, "model": {"depth": depth}},
        "history": {"val/acc": history or []}, "epochs_completed": len(history or []),
    })  # fmt: skip


def test_rates_step_by_half_decades():
    assert [neighbour_rate(r, 1) for r in (0.003, 0.01, 0.03, 0.1, 0.3)] == [0.01, 0.03, 0.1, 0.3, 1.0]
    assert [neighbour_rate(r, -1) for r in (0.01, 0.003, 0.001)] == [0.003, 0.001, 0.0003]


def test_the_choice_is_the_best_mean_over_seeds_and_says_where_it_sits(tmp_path):
    # relu: best mean at 0.03 (interior), though its single best seed is at 0.1
    for lr, scores in {0.01: (0.80, 0.81), 0.03: (0.86, 0.86), 0.1: (0.87, 0.80)}.items():
        for seed, score in enumerate(scores):
            search_run(tmp_path, "relu", lr, seed, score)
    # sigmoid: best at the top of its grid -> the grid extends to 0.3; at depth 8 it is capped at 1.0
    for lr, score in {0.03: 0.70, 0.1: 0.80}.items():
        search_run(tmp_path, "sigmoid", lr, 0, score)
        search_run(tmp_path, "sigmoid", lr, 1, score)
    search_run(tmp_path, "sigmoid", 0.3, 0, 0.85, depth=8)
    search_run(tmp_path, "sigmoid", 1.0, 0, 0.86, depth=8)
    # staf: best at the bottom; the rate below it diverged for one seed, which counts as 0
    search_run(tmp_path, "staf", 0.01, 0, 0.85)
    search_run(tmp_path, "staf", 0.03, 0, 0.80)
    search_run(tmp_path, "staf", 0.003, 0, 0.90)
    search_run(tmp_path, "staf", 0.003, 1, None, status="diverged")
    chosen = choose_learning_rates(tmp_path)
    relu, sigmoid, staf = chosen[4]["relu"], chosen[4]["sigmoid"], chosen[4]["staf"]
    assert relu["lr"] == 0.03 and relu["choice"] == "interior" and relu["val/acc_best"] == pytest.approx(0.86)
    assert relu["seeds"] == 2 and relu["tried"] == {"0.01": 0.805, "0.03": 0.86, "0.1": 0.835}
    assert sigmoid["lr"] == 0.1 and sigmoid["choice"] == "edge"
    assert chosen[8]["sigmoid"]["lr"] == 1.0 and chosen[8]["sigmoid"]["choice"] == "capped"
    assert staf["lr"] == 0.01 and staf["tried"]["0.003"] == pytest.approx(0.45) and staf["choice"] == "interior"
    assert rates_to_extend(chosen) == {(4, 0.3): ["sigmoid"]}


def test_a_rate_that_never_completes_is_not_tried_forever(tmp_path):
    search_run(tmp_path, "mish", 0.03, 0, 0.80)
    search_run(tmp_path, "mish", 0.1, 0, 0.85)
    search_run(tmp_path, "mish", 0.3, 0, None, status="failed")  # the extension's run failed
    chosen = choose_learning_rates(tmp_path)
    assert chosen[4]["mish"]["choice"] == "edge (0.3 did not complete)" and rates_to_extend(chosen) == {}


def test_a_shorter_budget_is_replayed_from_the_histories():
    history = [0.5, 0.6, 0.59, 0.58, 0.7, 0.71]
    assert within_budget(history, 10, 4) == (0.71, 6)  # never stalled for 4 epochs: ran out of history
    assert within_budget(history, 10, 2) == (0.6, 4)  # stalled at epochs 2 and 3: stopped after epoch 3
    assert within_budget(history, 3, 4) == (0.6, 3)  # the epoch budget ends first
    # an epoch not validated (null in a record, NaN in memory) neither counts as a best nor breaks the replay
    assert within_budget([None, 0.6, float("nan"), 0.7], 10, 4) == (0.7, 4)


def test_the_budget_check_names_the_choices_a_shorter_stage_1_would_change(tmp_path):
    # relu: 0.1 leads early, 0.03 wins late; tanh: 0.03 leads throughout; 0.1 diverges at epoch 5 for tanh
    search_run(tmp_path, "relu", 0.03, 0, 0.80, history=[0.5, 0.6, 0.7, 0.75, 0.8])
    search_run(tmp_path, "relu", 0.1, 0, 0.72, history=[0.65, 0.7, 0.72, 0.71, 0.7])
    search_run(tmp_path, "tanh", 0.03, 0, 0.78, history=[0.6, 0.7, 0.75, 0.78, 0.78])
    search_run(tmp_path, "tanh", 0.1, 0, None, status="diverged", history=[0.65, 0.5, 0.4, 0.3])
    full, short, shorter = budget_check(tmp_path, [(5, 4), (3, 4), (2, 1)])
    assert full == {"max_epochs": 5, "patience": 4, "model_epochs": 19, "changed": {}, "regret_mean": 0.0,
                    "regret_worst": 0.0}  # fmt: skip
    # 3 epochs: relu would take 0.1 (0.72 > 0.70); tanh's 0.1 had not diverged yet but scored less (0.65)
    assert short["changed"] == {"4/relu": (0.1, 0.03)} and short["model_epochs"] == 12
    assert shorter["changed"] == {"4/relu": (0.1, 0.03)} and shorter["model_epochs"] == 8
    # what that costs: relu's 0.1 scores 8 points below 0.03 with the full budget; tanh loses nothing
    assert short["regret_worst"] == pytest.approx(8.0) and short["regret_mean"] == pytest.approx(4.0)


def test_successive_halving_drops_the_rates_that_trail_early_and_says_what_it_loses(tmp_path):
    from actlab.fair import halving_check

    # relu: 0.1 leads after 2 epochs, 0.03 wins with the full budget; 0.01 trails throughout
    search_run(tmp_path, "relu", 0.01, 0, 0.60, history=[0.3, 0.4, 0.5, 0.55, 0.6])
    search_run(tmp_path, "relu", 0.03, 0, 0.80, history=[0.5, 0.6, 0.7, 0.75, 0.8])
    search_run(tmp_path, "relu", 0.1, 0, 0.72, history=[0.65, 0.7, 0.72, 0.71, 0.7])
    wide, narrow = halving_check(tmp_path, [(2, 15.0), (2, 5.0)])
    # 15 points: 0.01 (0.4 vs 0.7) leaves after 2 epochs, 0.03 (0.6) stays and still wins
    assert wide["changed"] == {} and wide["regret_worst"] == 0.0 and wide["model_epochs"] == 2 + 5 + 5
    # 5 points: only 0.1 survives; the choice loses 0.80 - 0.72 = 8 points
    assert narrow["changed"] == {"4/relu": (0.1, 0.03)} and narrow["model_epochs"] == 2 + 2 + 5
    assert narrow["regret_worst"] == pytest.approx(8.0) and (narrow["epoch"], narrow["margin"]) == (2, 5.0)


def test_fair_table_prints_the_budget_check_as_a_table(tmp_path):
    from conftest import REPO, load_script

    fair_table = load_script(REPO / "scripts" / "fair_table.py", "fair_table")
    search_run(tmp_path, "relu", 0.03, 0, 0.80, history=[0.5, 0.6, 0.7, 0.75, 0.8])
    search_run(tmp_path, "relu", 0.1, 0, 0.72, history=[0.65, 0.7, 0.72, 0.71, 0.7])
    table = fair_table.rules_report(tmp_path, "3:4,5:4", "2:5")
    assert "stage 1 as run: 10 model-epochs" in table
    assert "| 3 epochs, patience 4 | 6 | 60% | 8.00 | 8.00 | 4/relu 0.1 (not 0.03) |" in table
    assert "| 5 epochs, patience 4 | 10 | 100% | 0.00 | 0.00 | none |" in table
    assert "| halving after 2 epochs, margin 5 points | 7 | 70% | 8.00 | 8.00 | 4/relu 0.1 (not 0.03) |" in table
    with pytest.raises(SystemExit, match="EPOCHS:PATIENCE"):
        fair_table.rules_report(tmp_path, "5")
    with pytest.raises(SystemExit, match="EPOCH:MARGIN"):
        fair_table.rules_report(tmp_path, None, "5:x")


def test_stage_2s_rates_chosen_per_activation_give_one_row_per_activation(tmp_path):
    from actlab.summary import load_runs, summarize, varying_keys

    # stage 2: each activation at its own chosen rate (one `fair_choice` config each), seeds 1-2
    for activation, lr, scores in (("relu", 0.03, (0.86, 0.88)), ("tanh", 0.1, (0.84, 0.85))):
        for seed, score in enumerate(scores, start=1):
            run_dir = tmp_path / f"+fair_choice={activation}_depth4,seed={seed}"
            write_record(run_dir, {
                "status": "completed", "activation": activation, "depth": 4, "seed": seed, "test/acc": score,
                "overrides": [f"+fair_choice={activation}_depth4", f"seed={seed}"],
                "config": {"seed": seed, "optimizer": {"lr": lr}, "model": {"depth": 4},
                           "paths": {"output_dir": str(run_dir)}},
            })  # fmt: skip
    assert varying_keys(load_runs(tmp_path)) == []  # the rate follows the activation: it splits no row
    summarize(tmp_path)
    table = (tmp_path / "summary.md").read_text()
    assert "| activation | depth | test acc (%) | 95% CI | p vs best |" in table  # no extra key column
    assert "| relu | 4 | 87.00 ± 1.41 | ± 12.71 | best |" in table and "| 0.03 | — |" in table
    assert "| tanh | 4 | 84.50 ± 0.71 |" in table and "| 0.1 | — |" in table
