"""The run record: how each ending is recorded, the heartbeat, and stale records as `lost`."""

import signal
from datetime import datetime, timedelta, timezone

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException

from actlab.errors import DivergedError
from actlab.record import LOST, SCHEMA_DEFAULTS, RunRecord, effective_status, read_record


def test_a_record_has_its_whole_schema_from_the_first_write(tmp_path):
    with RunRecord(tmp_path, activation="relu") as record:
        on_disk = read_record(tmp_path)
        assert on_disk["status"] == "running" and set(on_disk) >= set(SCHEMA_DEFAULTS)
        assert on_disk["started_at"] and on_disk["updated_at"] and on_disk["activation"] == "relu"
        record.update(epochs_completed=3)
        record.write()  # a heartbeat
        assert read_record(tmp_path)["epochs_completed"] == 3
    final = read_record(tmp_path)
    assert final["status"] == "completed" and final["finished_at"]


def test_divergence_is_a_result_not_a_crash(tmp_path):
    with RunRecord(tmp_path):
        raise DivergedError("training loss is nan")
    assert read_record(tmp_path)["status"] == "diverged" and "nan" in read_record(tmp_path)["error"]


def test_a_failure_is_recorded_with_its_traceback_and_re_raised(tmp_path):
    with pytest.raises(ZeroDivisionError), RunRecord(tmp_path):
        1 / 0  # noqa: B018
    record = read_record(tmp_path)
    assert record["status"] == "failed" and "ZeroDivisionError" in record["error"]
    assert "1 / 0" in record["traceback"]


@pytest.mark.parametrize("error, code", [(KeyboardInterrupt(), 128 + signal.SIGINT),
                                         (SIGTERMException(), 128 + signal.SIGTERM)])  # fmt: skip
def test_an_interruption_is_recorded_and_exits_with_the_signal_code(tmp_path, error, code):
    with pytest.raises(SystemExit) as exit_info, RunRecord(tmp_path):
        raise error
    record = read_record(tmp_path)
    assert exit_info.value.code == code and record["status"] == "interrupted"
    # what stopped it and how to go on, not an error with an empty message
    assert record["error"].startswith("stopped by SIG") and "resume=true" in record["error"]
    from actlab.console import summary_line

    assert summary_line(record).startswith(f"run interrupted | {record['error']} |")


def test_a_running_record_gone_silent_is_lost():
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    fresh = {"status": "running", "updated_at": (now - timedelta(minutes=5)).isoformat()}
    stale = {"status": "running", "updated_at": (now - timedelta(hours=1)).isoformat()}
    slow = {**stale, "epoch_times_s": [1000.0]}  # an epoch takes 17 min: an hour is not silence yet
    assert effective_status(fresh, now) == "running" and effective_status(stale, now) == LOST
    assert effective_status(slow, now) == "running"
    assert effective_status({**stale, "status": "completed"}, now) == "completed"


def test_a_failed_unit_never_writes_into_a_directory_that_belongs_to_another_run(tmp_path):
    from actlab.errors import RunDirectoryError
    from actlab.record import SCHEMA_DEFAULTS, read_record, record_unit_failure, write_record

    write_record(tmp_path, {**SCHEMA_DEFAULTS, "status": "running", "owner": {"host": "node7", "pid": 4242}})
    before = (tmp_path / "metrics.json").read_text()
    record_unit_failure(tmp_path, RunDirectoryError(f"{tmp_path} belongs to a run still training"))
    assert (tmp_path / "metrics.json").read_text() == before  # that run's record, untouched
    assert record_unit_failure(tmp_path, RuntimeError("the pack's process died"))["status"] == "failed"
    assert read_record(tmp_path)["error"] == "RuntimeError: the pack's process died"
