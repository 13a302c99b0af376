"""Fair-comparison protocols: early stopping, testing the best checkpoint, learning-rate
schedules, torchmetrics, and what a sweeper is given to optimise."""

import math

import pytest
import torch
from conftest import compose_train, data_overrides
from test_training import train_in_process

from actlab.config import group_options
from actlab.models import SimpleNetwork


def test_early_stopping_stops_a_run_that_cannot_improve(tmp_path, fake_data_dir):
    # a learning rate this small leaves val/acc where it started: no epoch improves on the first
    record, _ = train_in_process(
        tmp_path,
        fake_data_dir,
        ["trainer.max_epochs=10", "callbacks=none", "optimizer.lr=1e-12", "callbacks.early_stopping.patience=2"],
    )
    assert record["status"] == "completed"
    assert record["epochs_completed"] == 3 and record["stopped_epoch"] == 2 and record["best_epoch"] == 0


def test_early_stopping_is_off_by_default(tmp_path, fake_data_dir):
    record, _ = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=4", "callbacks=none",
                                                           "optimizer.lr=1e-12"])  # fmt: skip
    assert record["epochs_completed"] == 4 and record["stopped_epoch"] is None


def evaluate_checkpoint(path, fake_data_dir, activation=torch.nn.ReLU):
    from actlab.data import FashionMNISTDataModule

    state = torch.load(path, weights_only=False)["state_dict"]
    net = SimpleNetwork(activation)
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    dm = FashionMNISTDataModule(data_dir=str(fake_data_dir), system_dir=None, download=False, val_size=128)
    dm.setup()
    with torch.no_grad():
        return float((net.eval()(dm.test_x).argmax(1) == dm.test_y).float().mean())


def test_test_ckpt_best_tests_the_best_epochs_weights(tmp_path, fake_data_dir):
    record, out = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=5", "callbacks=none",
                                                             "optimizer.lr=0.05", "test_ckpt=best"])  # fmt: skip
    assert record["test_ckpt"]["which"] == "best" and record["test_ckpt"]["epoch"] == record["best_epoch"]
    (best,) = (out / "checkpoints").glob("best_epoch=*.ckpt")
    assert record["test_ckpt"]["path"] == str(best)
    assert record["test/acc"] == pytest.approx(evaluate_checkpoint(best, fake_data_dir), abs=1e-6)
    last, _ = train_in_process(tmp_path / "last", fake_data_dir, ["trainer.max_epochs=5", "callbacks=none",
                                                                  "optimizer.lr=0.05"])  # fmt: skip
    assert last["test_ckpt"] == {"which": "last", "epoch": 4, "path": None}
    assert last["test/acc"] == pytest.approx(evaluate_checkpoint(tmp_path / "last" / "run" / "checkpoints" /
                                                                 "last.ckpt", fake_data_dir), abs=1e-6)  # fmt: skip


def one_cycle(max_lr: float, total_steps: int, steps: list[int], pct_start: float = 0.3) -> list[float]:
    """The one-cycle rate at ``steps``: cosine from max_lr/25 up to max_lr over pct_start of the
    run, then down to max_lr/25/1e4 (Smith & Topin 2017, as torch.optim.lr_scheduler.OneCycleLR)."""
    start, end = max_lr / 25, max_lr / 25 / 1e4
    rise = pct_start * total_steps - 1

    def anneal(a, b, fraction):
        return b + (a - b) / 2 * (math.cos(math.pi * fraction) + 1)

    return [anneal(start, max_lr, s / rise) if s <= rise else anneal(max_lr, end, (s - rise) / (total_steps - 1 - rise))
            for s in steps]  # fmt: skip


@pytest.mark.parametrize("scheduler", group_options("scheduler"))
def test_every_scheduler_composes_and_steps(scheduler, tmp_path, fake_data_dir):
    extra = {
        "step": ["scheduler.step_size=1"],
        "cosine": ["scheduler.warmup_epochs=1"],
        # a rate this small leaves val/loss within ReduceLROnPlateau's threshold (1e-4 relative) of
        # epoch 0's: no later epoch improves on it (and halving it is above the scheduler's eps, 1e-8)
        "plateau": ["optimizer.lr=1e-6", "scheduler.patience=0"],
    }.get(scheduler, [])
    record, _ = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=4", "callbacks=none",
                                                           f"scheduler={scheduler}", *extra])  # fmt: skip
    assert record["status"] == "completed", record.get("error")
    lr = record["history"]["train/lr"]
    assert len(lr) == 4
    if scheduler == "none":
        assert lr == [pytest.approx(1e-3)] * 4
    elif scheduler == "step":
        assert lr == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])
    elif scheduler == "cosine":  # one warm-up epoch from lr/2, then annealing to 0 over 3 epochs
        assert lr[0] == pytest.approx(5e-4) and lr[1] == pytest.approx(1e-3) and lr[1] > lr[2] > lr[3]
        assert lr[2:] == pytest.approx([1e-3 * (1 + math.cos(math.pi * t / 3)) / 2 for t in (1, 2)], rel=1e-5)
    elif scheduler == "plateau":  # epoch 0 improves (on nothing); each epoch after it halves the rate
        assert lr == pytest.approx([1e-6, 1e-6, 5e-7, 2.5e-7], rel=1e-5, abs=0)
    elif scheduler == "onecycle":  # per step: 384 training images in batches of 128, 3 steps an epoch
        assert lr == pytest.approx(one_cycle(1e-2, total_steps=12, steps=[0, 3, 6, 9]), rel=1e-5)
    else:
        raise AssertionError(f"scheduler={scheduler}: say which rates it must produce")


def test_a_runs_f1_and_per_class_accuracy_match_a_direct_computation(tmp_path, fake_data_dir):
    record, out = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=2", "callbacks=none"])
    from actlab.data import FashionMNISTDataModule

    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    net = SimpleNetwork(torch.nn.ReLU)
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    dm = FashionMNISTDataModule(data_dir=str(fake_data_dir), system_dir=None, download=False, val_size=128)
    dm.setup()
    with torch.no_grad():
        predictions = net.eval()(dm.test_x).argmax(1)
    f1s, recalls = [], []
    for c in range(10):
        tp = int(((predictions == c) & (dm.test_y == c)).sum())
        true, predicted = int((dm.test_y == c).sum()), int((predictions == c).sum())
        f1s.append(2 * tp / (true + predicted) if true + predicted else 0.0)
        recalls.append(tp / true if true else 0.0)
        assert record[f"test/acc_class_{c}"] == pytest.approx(recalls[-1], abs=1e-6)
    assert record["test/f1"] == pytest.approx(sum(f1s) / 10, abs=1e-6)
    assert "val/f1" in record["history"]


def test_the_sweeper_is_given_a_validation_metric(tmp_path, fake_data_dir):
    from conftest import REPO, load_script
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from actlab.record import read_record

    entry = load_script(REPO / "train.py", "actlab_train_script")
    out = tmp_path / "run"
    cfg = compose_train([*data_overrides(fake_data_dir), "trainer.max_epochs=2", "callbacks=none", "logger=csv"],
                        out, return_hydra_config=True)  # fmt: skip
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    value = entry.main.__wrapped__(cfg)  # what Hydra hands to a sweeper (Optuna, ...)
    record = read_record(out)
    assert value == record["val/acc_best"] == max(record["history"]["val/acc"])


def test_fair_table_script_picks_rates_on_validation_and_tests_best_checkpoints(tmp_path, fake_data_dir):
    import json
    import subprocess
    import sys

    from conftest import REPO

    from actlab.summary import load_runs

    extra = [*data_overrides(fake_data_dir), "trainer.max_epochs=3", "callbacks=none", "logger=csv",
             "hydra.job.config.override_dirname.exclude_keys=[data.data_dir,data.system_dir,data.download,"
             "data.val_size,trainer.enable_progress_bar,callbacks.progress_bar,trainer.max_epochs,callbacks,logger,"
             "experiment,resume]"]  # fmt: skip
    # one starting rate: the grid must extend once (to 0.03), then every choice is capped at 0.01 or 0.03
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "fair_table.py"), "--out", str(tmp_path / "fair"),
                             "--activations", "relu,tanh", "--rates", "0.01", "--min-rate", "0.01", "--max-rate",
                             "0.03", "--floor-s", "0.01", "--search-seeds", "1", "--seeds", "1,2", "--", *extra],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "relu,tanh chose the edge of the grid: trying lr 0.03" in result.stdout
    (chosen,) = json.loads((tmp_path / "fair" / "chosen_lr.json").read_text()).values()  # one depth
    assert set(chosen) == {"relu", "tanh"} and all(set(c["tried"]) == {"0.01", "0.03"} for c in chosen.values())
    assert all(c["choice"] == "capped" and c["seeds"] == 1 for c in chosen.values())
    search = load_runs(tmp_path / "fair" / "lr_search")
    assert len(search) == 4 and not any(r.get("test/acc") for r in search)  # the test set unseen in stage 1
    for activation, choice in chosen.items():  # the best validation score, never the test score
        best = max((r for r in search if r["activation"] == activation), key=lambda r: r["val/acc_best"])
        assert choice["lr"] == best["config"]["optimizer"]["lr"]
    final = load_runs(tmp_path / "fair" / "final")
    assert len(final) == 4 and all(r["status"] == "completed" and r["test_ckpt"]["which"] == "best" for r in final)
    assert all(r["pack"]["size"] == 4 for r in final)  # one pack, though the activations' rates may differ
    assert all(r["config"]["optimizer"]["lr"] == chosen[r["activation"]]["lr"] for r in final)
    assert "| 95% CI | p vs best |" in (tmp_path / "fair" / "summary.md").read_text()
    assert "model-epochs trained: stage 1 " in result.stdout and "protocol efficiency" in result.stdout


def test_a_two_trial_optuna_search_runs_offline_and_resumes_from_its_study(tmp_path, fake_data_dir):
    pytest.importorskip("optuna")
    import json
    import subprocess
    import sys

    from conftest import REPO

    search_dir = tmp_path / "search"
    command = [sys.executable, str(REPO / "scripts" / "optuna_search.py"), "hparams_search=optuna", "activation=relu",
               f"hparams_search.dir={search_dir}", "hparams_search.n_trials=2", "trainer.max_epochs=2",
               "callbacks=none", "logger=csv", *data_overrides(fake_data_dir)]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    best = json.loads((search_dir / "best.json").read_text())
    assert best["trials"] == 2 and set(best["params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    from actlab.record import read_record

    trial = read_record(best["output_dir"])
    assert trial["status"] == "completed" and trial["val/acc_best"] == pytest.approx(best["value"])
    assert trial["config"]["optimizer"]["lr"] == pytest.approx(best["params"]["optimizer.lr"])
    # the same command with more trials resumes the study: the two done trials are kept
    again = subprocess.run([*command, "hparams_search.n_trials=3"], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((search_dir / "best.json").read_text())["trials"] == 3
    assert sorted(p.name for p in search_dir.glob("trial_*")) == ["trial_000", "trial_001", "trial_002"]
