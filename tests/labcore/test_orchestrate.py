"""labcore.orchestrate: stages in order, skipped when complete, --dry-run, --only, failures, values."""

import argparse
import json
import sys

import pytest

from labcore.orchestrate import (
    NotReady,
    Pipeline,
    Stage,
    StageFailed,
    StopRun,
    add_pipeline_arguments,
    run_pipeline_cli,
)
from labcore.sweep import sweep_complete


def write_file_command(path, text):
    """A subprocess that prints a line and writes `text` to `path`."""
    code = f"import pathlib; print('writing {path.name}'); pathlib.Path({str(path)!r}).write_text({text!r})"
    return [sys.executable, "-c", code]


def three_stages(tmp_path, calls):
    """extract (command) -> select (callable, returns a value) -> train (command built from the value)."""
    out = tmp_path / "outputs"

    def select(values):
        calls.append("select")
        return {"k": 8}

    return [
        Stage("extract", command=write_file_command(out / "extract.txt", "acts")),
        Stage("select", call=select, what="pick k", dry_run_value={"k": "<k>"}),
        Stage("train", command=lambda v: write_file_command(out / "train.txt", f"k={v['select']['k']}")),
    ]


@pytest.fixture
def outputs(tmp_path):
    (tmp_path / "outputs").mkdir()
    return tmp_path / "outputs"


def test_a_value_passes_from_one_stage_to_the_next(tmp_path, outputs):
    calls = []
    pipeline = Pipeline("demo", three_stages(tmp_path, calls), tmp_path / "work")
    values = pipeline.run()
    assert values == {"extract": None, "select": {"k": 8}, "train": None}
    assert (outputs / "train.txt").read_text() == "k=8"
    assert [r.state for r in pipeline.records] == ["ran", "ran", "ran"]
    assert "writing extract.txt" in (tmp_path / "work" / "extract.log").read_text()   # command output logged
    marker = json.loads((tmp_path / "work" / "select.done.json").read_text())
    assert marker["value"] == {"k": 8} and marker["exit_status"] == 0


def test_complete_stages_are_skipped_and_their_values_restored(tmp_path, outputs):
    calls = []
    Pipeline("demo", three_stages(tmp_path, calls), tmp_path / "work").run()
    (outputs / "extract.txt").unlink()
    (outputs / "train.txt").unlink()
    again = Pipeline("demo", three_stages(tmp_path, calls), tmp_path / "work")
    assert again.run() == {"extract": None, "select": {"k": 8}, "train": None}
    assert calls == ["select"]                                   # not called a second time
    assert not (outputs / "extract.txt").exists() and not (outputs / "train.txt").exists()
    assert [r.state for r in again.records] == ["skipped"] * 3
    assert again.records[2].command[-1].endswith("'k=8')")     # the command it finished with
    # --restart redoes them
    Pipeline("demo", three_stages(tmp_path, calls), tmp_path / "work").run(restart=True)
    assert calls == ["select", "select"] and (outputs / "train.txt").read_text() == "k=8"


def test_a_changed_command_and_a_redone_stage_make_later_stages_run_again(tmp_path, outputs):
    calls = []
    Pipeline("demo", three_stages(tmp_path, calls), tmp_path / "work").run()
    stages = three_stages(tmp_path, calls)
    stages[0] = Stage("extract", command=write_file_command(outputs / "extract.txt", "other acts"))
    pipeline = Pipeline("demo", stages, tmp_path / "work")
    steps = pipeline.plan()
    assert [s.action for s in steps] == ["run", "run", "run"]
    assert "command changed" in steps[0].reason and "extract runs before it" in steps[1].reason
    pipeline.run()
    assert calls == ["select", "select"] and (outputs / "extract.txt").read_text() == "other acts"


def test_dry_run_prints_the_plan_and_runs_and_writes_nothing(tmp_path, capsys):
    calls = []
    work = tmp_path / "work"
    parser = argparse.ArgumentParser()
    add_pipeline_arguments(parser)
    status = run_pipeline_cli(Pipeline("demo", three_stages(tmp_path, calls), work), parser.parse_args(["--dry-run"]))
    assert status == 0 and calls == [] and not work.exists() and not (tmp_path / "outputs").exists()
    plan = capsys.readouterr().out
    assert "1. extract: would run (not done yet)" in plan and "2. select: would run" in plan and "pick k" in plan
    commands = [line.strip() for line in plan.splitlines() if line.strip().startswith("$ ")]
    assert len(commands) == 2 and "extract.txt" in commands[0] and "k=<k>" in commands[1]


def test_dry_run_after_a_run_says_what_is_complete(tmp_path, outputs):
    calls = []
    pipeline = Pipeline("demo", three_stages(tmp_path, calls), tmp_path / "work")
    pipeline.run(only="extract")
    before = sorted(p.name for p in (tmp_path / "work").iterdir())
    plan = pipeline.describe_plan()
    assert "1. extract: skipped (complete" in plan and "2. select: would run (not done yet)" in plan
    assert "3. train: would run (select runs before it)" in plan
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == before and calls == []


def test_only_runs_one_stage_and_refuses_when_a_needed_stage_is_incomplete(tmp_path, outputs):
    calls = []
    pipeline = Pipeline("demo", three_stages(tmp_path, calls), tmp_path / "work")
    with pytest.raises(NotReady, match="needs stage 'extract', which is not complete"):
        pipeline.run(only="select")
    assert calls == [] and not (outputs / "extract.txt").exists()
    with pytest.raises(ValueError, match="unknown stage 'nope'.*extract, select, train"):
        pipeline.plan(only="nope")

    pipeline.run()                                     # everything done
    assert pipeline.run(only="select")["select"] == {"k": 8}
    assert calls == ["select", "select"]               # --only runs its stage even when complete
    assert [r.stage for r in pipeline.records] == ["extract", "select"]   # train left alone
    # ... and a stage that ran makes the ones after it incomplete
    assert not (tmp_path / "work" / "train.done.json").exists()
    assert [s.action for s in pipeline.plan()] == ["skip", "skip", "run"]
    (outputs / "train.txt").unlink()
    pipeline.run(only="train")                         # its value comes from select's marker
    assert (outputs / "train.txt").read_text() == "k=8" and calls == ["select", "select"]


def test_a_failing_command_names_its_stage_and_log_and_stops_the_run(tmp_path, outputs):
    calls = []
    stages = three_stages(tmp_path, calls)
    stages[0] = Stage("extract", command=[sys.executable, "-c", "import sys; print('out of memory'); sys.exit(3)"])
    pipeline = Pipeline("demo", stages, tmp_path / "work")
    log = tmp_path / "work" / "extract.log"
    with pytest.raises(StageFailed) as err:
        pipeline.run()
    assert "stage 'extract' failed: exit status 3" in str(err.value) and str(log) in str(err.value)
    assert err.value.stage == "extract" and err.value.log == log and pipeline.error is err.value
    assert "out of memory" in log.read_text()
    assert calls == [] and not (tmp_path / "work" / "extract.done.json").exists()
    assert [(r.stage, r.state, r.exit_status) for r in pipeline.records] == [("extract", "failed", 3)]


def test_a_failing_callable_names_its_stage_and_logs_its_traceback(tmp_path, capsys):
    def broken(values):
        print("reading the sweep")
        raise KeyError("k")

    pipeline = Pipeline("demo", [Stage("select", call=broken), Stage("train", call=lambda v: 1)], tmp_path / "work")
    parser = argparse.ArgumentParser()
    add_pipeline_arguments(parser)
    assert run_pipeline_cli(pipeline, parser.parse_args([])) == 1
    err = capsys.readouterr().err
    assert "stage 'select' failed: KeyError: 'k'" in err and str(tmp_path / "work" / "select.log") in err
    log = (tmp_path / "work" / "select.log").read_text()
    assert "reading the sweep" in log and "Traceback" in log
    assert "train" not in pipeline.values


def test_a_stage_can_stop_the_run_early_with_its_value(tmp_path):
    def select(values):
        raise StopRun("no k passes the rule", value={"winner": None})

    ran = []
    pipeline = Pipeline("demo", [Stage("select", call=select), Stage("train", call=lambda v: ran.append(1))],
                        tmp_path / "work")
    parser = argparse.ArgumentParser()
    add_pipeline_arguments(parser)
    assert run_pipeline_cli(pipeline, parser.parse_args([])) == 3
    assert pipeline.values == {"select": {"winner": None}} and ran == []
    assert pipeline.records[0].state == "stopped"
    assert not (tmp_path / "work" / "select.done.json").exists()   # a later run asks again


def test_a_stage_can_be_judged_by_its_own_check(tmp_path):
    """A sweep stage is complete when every job of its sweep has metrics.json."""
    sweep = tmp_path / "sweep"
    job = sweep / "0"
    job.mkdir(parents=True)
    (job / "manifest.json").write_text(json.dumps({"status": "running", "overrides": ["seed=0"]}))
    code = f"import pathlib; pathlib.Path({str(job / 'metrics.json')!r}).write_text('{{\"loss\": 1.0}}')"
    stage = Stage("sweep", command=[sys.executable, "-c", code], complete=lambda: sweep_complete(sweep, ["loss"]))
    pipeline = Pipeline("demo", [stage], tmp_path / "work")
    assert pipeline.plan()[0].action == "run"
    pipeline.run()
    (tmp_path / "work" / "sweep.done.json").unlink()   # the check alone decides
    assert pipeline.plan()[0].action == "skip"
