"""The per-step JSONL log: appends survive a kill, a torn line is dropped, truncation keeps a prefix."""

import json

from labcore.steplog import StepLog, read_step_log, series


def test_append_read_and_reopen(tmp_path):
    log = StepLog(tmp_path / "steps.jsonl")
    for step in range(3):
        log.append({"step": step, "loss": 1.0 / (step + 1), "nan": float("nan")})
    # flushed: another reader sees every record while the log is still open
    assert [r["step"] for r in read_step_log(log.path)] == [0, 1, 2]
    assert read_step_log(log.path)[0]["nan"] is None  # JSON has no NaN
    log.close()
    again = StepLog(tmp_path / "steps.jsonl")
    assert len(again) == 3
    again.append({"step": 3, "loss": 0.25})
    assert series(again.read(), "loss") == ([0, 1, 2, 3], [1.0, 0.5, 1 / 3, 0.25])


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps({"step": 0}) + "\n" + '{"step": 1, "lo')  # killed mid-write
    assert read_step_log(path) == [{"step": 0}]
    log = StepLog(path)
    log.append({"step": 1})
    assert [r["step"] for r in log.read()] == [0, 1]
    assert path.read_text().count("\n") == 2


def test_truncate_keeps_a_prefix_and_later_steps_below(tmp_path):
    log = StepLog(tmp_path / "steps.jsonl")
    for step in range(10):
        log.append({"step": step})
    log.truncate(4, keep_steps_below=6)  # a checkpoint had seen 4 records; steps 4 and 5 stay
    assert [r["step"] for r in log.read()] == [0, 1, 2, 3, 4, 5] and len(log) == 6
    log.truncate(2)
    log.append({"step": 2})
    assert [r["step"] for r in read_step_log(log.path)] == [0, 1, 2]
