"""Successive halving of a rate grid in a pack (callbacks.rate_halving): the rule, the members it
stops (and keeps stopped on resume), the packs the launcher forms for it, and fail-closed."""

import logging

import pytest
import torch
from conftest import compose_train, data_overrides

from actlab.callbacks import surviving_rates
from actlab.errors import ConfigError
from actlab.pack.checkpoint import stopped_early
from actlab.pack.members import Member, halving_group
from actlab.pack.training import train_pack

HALVING = ["+callbacks.rate_halving._target_=actlab.callbacks.RateHalving", "+callbacks.rate_halving.after_epochs=1",
           "+callbacks.rate_halving.margin=0.5"]  # fmt: skip


def test_the_rule_keeps_the_rates_within_the_margin_of_the_best():
    scores = {0.1: [0.80, 0.82], 0.03: [0.806, 0.81], 0.01: [0.70, 0.90], 0.001: [0.10, 0.12]}
    # means 0.81, 0.808 (0.2 points behind), 0.80 (1 point), 0.11
    assert surviving_rates(scores, 0.5) == {0.1, 0.03}
    assert surviving_rates(scores, 1.5) == {0.1, 0.03, 0.01}
    assert surviving_rates(scores, 0.0) == {0.1}
    assert surviving_rates({0.1: [0.5]}, 0.5) == {0.1} and surviving_rates({}, 0.5) == set()


def members(tmp_path, fake_data_dir, rates=(0.1, 1e-6), seeds=(1, 2), extra=(), peers="count"):
    base = [*data_overrides(fake_data_dir), "optimizer=sgd", "callbacks=none", "callbacks.early_stopping.patience=5",
            "trainer.max_epochs=3", *HALVING, *extra]  # fmt: skip
    built = []
    for lr in rates:
        for seed in seeds:
            out = tmp_path / f"lr{lr:g}-seed{seed}"
            overrides = [f"seed={seed}", "activation=relu", f"optimizer.lr={lr}"]
            built.append(Member(compose_train([*base, *overrides], out), out, "relu", overrides))
    for member in built:  # what the packed launcher counts: the sweep's jobs of the member's group
        member.halving_peers = len(built) if peers == "count" else peers
    return built


def test_a_rate_that_trails_after_one_epoch_stops_there_and_stays_stopped(tmp_path, fake_data_dir):
    records = train_pack(members(tmp_path, fake_data_dir), "p")
    assert [r["status"] for r in records] == ["completed"] * 4
    fast, slow = records[:2], records[2:]
    assert all(r["stop_reason"] is None and r["epochs_completed"] == 3 for r in fast), fast
    how = [(r["stop_reason"], r["stopped_epoch"], r["epochs_completed"]) for r in slow]
    assert how == [("rate_halving", 0, 1)] * 2, how
    assert min(r["val/acc_best"] for r in fast) > max(r["val/acc_best"] for r in slow) + 0.005
    # what a resumed pack reads: the halved member's own checkpoint says it had stopped
    for r in slow:
        checkpoint = torch.load(tmp_path / f"lr1e-06-seed{r['seed']}" / "checkpoints" / "last.ckpt", weights_only=False)
        assert stopped_early(checkpoint) and checkpoint["epoch"] == 0  # saved at the end of its first epoch
    for r in fast:
        checkpoint = torch.load(tmp_path / f"lr0.1-seed{r['seed']}" / "checkpoints" / "last.ckpt", weights_only=False)
        assert not stopped_early(checkpoint)


def test_a_pack_without_every_job_of_a_group_trains_its_full_budget(tmp_path, fake_data_dir, caplog):
    # the sweep had more jobs in this group than the pack holds (another pack, a finished run): no halving
    with caplog.at_level(logging.INFO, logger="actlab.pack.training"):
        records = train_pack(members(tmp_path, fake_data_dir, peers=5), "p")
    assert all(r["status"] == "completed" and r["stop_reason"] is None and r["epochs_completed"] == 3
               for r in records)  # fmt: skip
    assert "rate halving off for" in caplog.text


def test_halving_without_early_stopping_is_refused(tmp_path, fake_data_dir):
    with pytest.raises(ConfigError, match="set callbacks.early_stopping.patience"):
        train_pack(members(tmp_path, fake_data_dir, extra=["callbacks.early_stopping.patience=null"]), "p")


def test_the_launcher_keeps_a_group_in_one_pack_and_counts_its_jobs(tmp_path, fake_data_dir):
    from hydra_plugins.actlab_packed_launcher.packed_launcher import group_into_packs

    base = [*data_overrides(fake_data_dir), "optimizer=sgd", "callbacks=none", "callbacks.early_stopping.patience=5",
            *HALVING]  # fmt: skip
    jobs = []
    for activation in ("relu", "tanh", "gelu"):
        for lr in (0.01, 0.03, 0.1):
            for seed in (1, 2):
                out = tmp_path / f"{activation}-{lr}-{seed}"
                overrides = [f"seed={seed}", f"activation={activation}", f"optimizer.lr={lr}"]
                jobs.append(Member(compose_train([*base, *overrides], out), out, activation, overrides))
    packs, alone = group_into_packs(jobs, pack_size=8)  # 18 jobs, groups of 6: never cut
    assert not alone and sorted(len(p) for p in packs) == [6, 6, 6]
    for pack in packs:
        assert len({halving_group(jobs[i].cfg) for i in pack}) == 1
        assert [float(jobs[i].cfg.optimizer.lr) for i in pack] == sorted(float(jobs[i].cfg.optimizer.lr) for i in pack)
    assert {j.halving_peers for j in jobs} == {6}
    without = [Member(compose_train([*base[:-3], *j.overrides], j.output_dir), j.output_dir, j.activation, j.overrides)
               for j in jobs]  # fmt: skip
    packs, _ = group_into_packs(without, pack_size=8)  # no halving: packs of equal size, by rate
    assert sorted(len(p) for p in packs) == [6, 6, 6] and {j.halving_peers for j in without} == {None}


def test_a_run_alone_warns_and_trains_its_full_budget():
    from actlab.callbacks import RateHalving

    with pytest.raises(ValueError, match="after_epochs must be a positive integer"):
        RateHalving(after_epochs=0)
    with pytest.warns(UserWarning, match="trains alone, so it trains its full budget"):
        RateHalving().on_fit_start(None, None)
