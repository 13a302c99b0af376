"""The CSV logger a resumed run writes through: earlier rows kept, each epoch once."""

import csv

from actlab.csv_logger import CSVLogger


def rows(logger):
    with open(logger.experiment.metrics_file_path, newline="") as file:
        return [(int(r["epoch"]), r["val/acc"]) for r in csv.DictReader(file)]


def test_a_second_attempt_keeps_the_rows_before_the_epoch_it_restarts_from(tmp_path):
    first = CSVLogger(tmp_path, name="csv", version="")
    for epoch in range(4):
        first.log_metrics({"epoch": epoch, "val/acc": 0.1 * epoch}, step=epoch)
    first.save()

    again = CSVLogger(tmp_path, name="csv", version="")  # a resume from the checkpoint of epoch 1
    assert [epoch for epoch, _ in rows(again)] == [0, 1, 2, 3]  # nothing lost before the new rows come
    again.log_metrics({"epoch": 2, "val/acc": 0.5, "val/loss": 1.0}, step=2)  # a new column too
    again.save()
    again.log_metrics({"epoch": 3, "val/acc": 0.6, "val/loss": 0.9}, step=3)
    again.save()
    assert rows(again) == [(0, "0.0"), (1, "0.1"), (2, "0.5"), (3, "0.6")]


def test_rows_logged_before_the_checkpoint_stay_whatever_their_step(tmp_path):
    """A checkpoint taken at validation's end, inside epoch 1: its validation row was logged
    before it (and is not logged again), its training row after it (and is). The resumed file
    keeps the first and replaces the second; the count a checkpoint keeps covers the rows kept
    and those logged since, saved or not."""
    first = CSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"epoch": 0, "train/loss": 2.0}, step=9)
    first.log_metrics({"epoch": 1, "val/acc": 0.3}, step=19)
    at_checkpoint = first.rows_logged()
    first.log_metrics({"epoch": 1, "train/loss": 1.5}, step=19)
    first.save()
    assert at_checkpoint == 2 and first.rows_logged() == 3

    again = CSVLogger(tmp_path, name="csv", version="")
    again.resume_after(at_checkpoint)
    assert again.rows_logged() == 2  # nothing logged since the resume: the rows before its checkpoint
    again.log_metrics({"epoch": 1, "train/loss": 1.4}, step=19)
    assert again.rows_logged() == 3  # not saved yet: the rows that will stay and the new one
    again.save()
    with open(again.experiment.metrics_file_path, newline="") as file:
        kept = [(r["step"], r["val/acc"], r["train/loss"]) for r in csv.DictReader(file)]
    assert kept == [("9", "", "2.0"), ("19", "0.3", ""), ("19", "", "1.4")]
