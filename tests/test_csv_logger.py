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
