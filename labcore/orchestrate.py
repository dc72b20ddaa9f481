"""Pipelines of named stages that resume where they stopped.

    stages = [
        Stage("search", command=[sys.executable, "-m", "my_line.train", "-m", ...]),
        Stage("select", call=lambda values: {"k": pick_k(...)}, dry_run_value={"k": "<k>"}),
        Stage("retrain", command=lambda values: [..., f"k={values['select']['k']}"]),
    ]
    Pipeline("study", stages, work_dir).run()

Stages run in order; each needs every stage before it. A stage is either a subprocess command
(its output streamed to the console and to `<work_dir>/<stage>.log`) or a Python callable (its
printed output and any traceback go to that log too).

Completion. A stage that finishes writes `<work_dir>/<stage>.done.json` atomically: its command,
exit status, wall time and value. A stage is complete when that marker exists (for a command: one
recording the same command, so changed arguments redo it) or, when the stage has its own
`complete` check (e.g. `labcore.sweep.sweep_complete` on its sweep directory), when that passes.
A run skips complete stages, unless a stage before them runs: their inputs are being redone.
Running a stage deletes the markers of the stages after it, so a later run redoes them too.

Values. A callable receives {stage name: value} of the stages before it and returns its own value,
which must be JSON (it is kept in the marker, so a resumed run gets it back without redoing the
stage; NaN survives). A command may be a function of the same mapping. A dry run runs nothing, so
a stage that would run stands in with its `dry_run_value` when later commands are printed.

Ends. A stage that fails stops the run with `StageFailed`, naming the stage and its log. A callable
that decides the run should end here, not as a failure (a selection with no winner), raises
`StopRun(reason, value)`. `add_pipeline_arguments` and `run_pipeline_cli` give every line's CLI the
same flags: `--dry-run`, `--only STAGE`, `--restart`; resuming is the default.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

Values = dict[str, Any]
Command = Union[Sequence[str], Callable[[Values], Sequence[str]]]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


class StageFailed(RuntimeError):
    """A stage failed; the message names the stage and its log."""

    def __init__(self, stage: str, log: Path, what: str):
        super().__init__(f"stage '{stage}' failed: {what}; its output is in {log}")
        self.stage, self.log, self.what = stage, log, what

    def __reduce__(self):  # pickled across processes (a stage run by a launcher) with its fields
        return type(self), (self.stage, self.log, self.what)


class StopRun(Exception):
    """Raised by a stage's callable to end the run early on purpose; `value` is still its value."""

    def __init__(self, reason: str, value: Any = None):
        super().__init__(reason)
        self.reason, self.value = reason, value


class NotReady(RuntimeError):
    """`--only STAGE` asked for a stage whose earlier stages are not complete."""


@dataclass
class Stage:
    name: str
    command: Command | None = None                    # a subprocess, or a function of the values
    call: Callable[[Values], Any] | None = None       # or a Python callable
    complete: Callable[[], bool] | None = None        # its own completion check, instead of the marker
    what: str = ""                                    # one line for the plan
    dry_run_value: Any = None                         # its value in a dry run, for later commands

    def __post_init__(self):
        if (self.command is None) == (self.call is None):
            raise ValueError(f"stage {self.name!r} needs exactly one of command= or call=")


@dataclass
class StageRecord:
    """What happened to a stage in this run (a skipped stage keeps its earlier command and timing)."""
    stage: str
    state: str                       # ran | skipped | failed | stopped
    command: list[str] | None
    exit_status: int | None
    wall_s: float | None
    log: Path


@dataclass
class Step:
    """The plan for one stage: run it, skip it (complete), or leave it (outside --only)."""
    stage: Stage
    action: str                      # run | skip | leave
    reason: str
    command: list[str] | None = None  # as far as it can be known before the run (see dry_run_value)


def run_logged(cmd: Sequence[str], log_path: Path, prefix: str = "") -> int:
    """Run `cmd`, streaming its output to the console and to `log_path`; return its exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"{prefix}$ {shlex.join(cmd)}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log, subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, env=env) as proc:
        log.write(f"$ {shlex.join(cmd)}\n")
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
    return proc.returncode


class _Tee:
    """A text stream writing to the console stream and a log file at once."""

    def __init__(self, console, log):
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.console.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def __getattr__(self, name: str):   # isatty, encoding, fileno ...: the console's
        return getattr(self.console, name)


class Pipeline:
    """Named stages over one work directory; `run` executes them, `describe_plan` only says what
    a run would do. After `run`, `values` and `records` hold what happened, also when it raised."""

    def __init__(self, name: str, stages: Sequence[Stage], work_dir: str | Path):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.name, self.stages, self.work_dir = name, list(stages), Path(work_dir)
        self.values: Values = {}
        self.records: list[StageRecord] = []
        self.error: StageFailed | StopRun | None = None   # how the last run ended, if not by finishing

    # ---- where things are -------------------------------------------------------------------
    def log_path(self, stage: str) -> Path:
        return self.work_dir / f"{stage}.log"

    def marker_path(self, stage: str) -> Path:
        return self.work_dir / f"{stage}.done.json"

    def _marker(self, stage: str) -> dict | None:
        try:
            return json.loads(self.marker_path(stage).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None   # atomic writes make a broken marker unlikely; it then counts as not done

    def _say(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)

    # ---- planning ---------------------------------------------------------------------------
    @staticmethod
    def _command(stage: Stage, values: Values) -> list[str]:
        cmd = stage.command(values) if callable(stage.command) else stage.command
        return [str(c) for c in cmd]

    def _completion(self, stage: Stage, values: Values) -> tuple[bool, str]:
        """(complete?, why) from the stage's own check or its marker."""
        if stage.complete is not None:
            return (True, "its completion check passes") if stage.complete() else \
                   (False, "its completion check does not pass")
        marker = self._marker(stage.name)
        if marker is None:
            return False, "not done yet"
        if stage.command is not None and marker.get("command") != self._known_command(stage, values):
            return False, "its command changed since it finished"
        return True, f"finished {marker.get('finished_at', 'earlier')}"

    def plan(self, only: str | None = None, restart: bool = False) -> list[Step]:
        """What a run would do with each stage. Raises ValueError for an unknown `only` and
        NotReady when a stage before `only` is not complete."""
        names = [s.name for s in self.stages]
        if only is not None and only not in names:
            raise ValueError(f"unknown stage {only!r}; the stages of {self.name} are: {', '.join(names)}")
        steps: list[Step] = []
        values: Values = {}            # marker values of skipped stages, stand-ins for the rest
        upstream_runs = ""             # the first stage that runs: everything after it runs too
        for stage in self.stages:
            if only is not None:
                position = names.index(stage.name) - names.index(only)
                if position > 0:
                    steps.append(Step(stage, "leave", f"not run (--only {only})",
                                      self._known_command(stage, values)))
                    continue
                if position == 0:
                    step = Step(stage, "run", f"--only {only}")
                else:
                    done, why = self._completion(stage, values)
                    if not done:
                        raise NotReady(f"cannot run --only {only}: it needs stage '{stage.name}', which is not "
                                       f"complete ({why}) in {self.work_dir}; run the stages before it first "
                                       f"(a run without --only resumes from the first incomplete stage)")
                    step = Step(stage, "skip", f"complete, {why}")
            elif restart:
                step = Step(stage, "run", "--restart")
            elif upstream_runs:
                step = Step(stage, "run", f"{upstream_runs} runs before it")
            else:
                done, why = self._completion(stage, values)
                step = Step(stage, "skip", f"complete, {why}") if done else Step(stage, "run", why)
            if step.action == "run":
                upstream_runs = upstream_runs or stage.name
            step.command = self._known_command(stage, values)
            values[stage.name] = (stage.dry_run_value if step.action == "run"
                                  else (self._marker(stage.name) or {}).get("value"))
            steps.append(step)
        return steps

    def _known_command(self, stage: Stage, values: Values) -> list[str] | None:
        if stage.command is None:
            return None
        try:
            return self._command(stage, values)
        except Exception:   # built from a value that only a run produces
            return None

    def describe_plan(self, only: str | None = None, restart: bool = False) -> str:
        """The plan in words: each stage, whether it is complete or would run and why, its command."""
        lines = [f"[{self.name}] plan in {self.work_dir} (dry run: nothing is run or written)"]
        for i, step in enumerate(self.plan(only, restart), 1):
            verb = {"run": "would run", "skip": "skipped", "leave": "left"}[step.action]
            what = f": {step.stage.what}" if step.stage.what else ""
            lines.append(f"  {i}. {step.stage.name}: {verb} ({step.reason}){what}")
            if step.command is not None:
                lines.append(f"     $ {shlex.join(step.command)}")
            elif step.stage.command is not None:
                lines.append("     (its command is built from the values of the stages before it, once they have run)")
        return "\n".join(lines)

    # ---- running ----------------------------------------------------------------------------
    def run(self, only: str | None = None, restart: bool = False) -> Values:
        """Run the plan; returns {stage: value}. Raises StageFailed, StopRun, NotReady, ValueError."""
        steps = self.plan(only, restart)
        self.values, self.records, self.error = {}, [], None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            for i, step in enumerate(steps):
                self._take(step, later=steps[i + 1:])
        except (StageFailed, StopRun) as e:
            self.error = e
            raise
        return self.values

    def _take(self, step: Step, later: list[Step]) -> None:
        name = step.stage.name
        if step.action == "leave":
            return
        if step.action == "skip":
            marker = self._marker(name) or {}
            self.values[name] = marker.get("value")
            self.records.append(StageRecord(name, "skipped", marker.get("command"), marker.get("exit_status"),
                                            marker.get("wall_s"), self.log_path(name)))
            self._say(f"{name}: {step.reason}: skipped")
            return
        for after in later:   # their inputs are being redone
            self.marker_path(after.stage.name).unlink(missing_ok=True)
        self.marker_path(name).unlink(missing_ok=True)
        self._say(f"{name}: running ({step.reason})")
        self._run_stage(step.stage)

    def _run_stage(self, stage: Stage) -> None:
        log = self.log_path(stage.name)
        t0 = time.time()
        command = None
        if stage.command is not None:
            try:
                command = self._command(stage, self.values)
            except Exception as e:
                self._record(stage, "failed", None, None, t0)
                raise StageFailed(stage.name, log, f"its command could not be built ({type(e).__name__}: {e})") from e
            try:
                rc = run_logged(command, log, prefix=f"[{self.name}] ")
            except OSError as e:   # the program itself cannot be started
                self._record(stage, "failed", command, None, t0)
                raise StageFailed(stage.name, log, f"its command could not be started ({e})") from e
            self._say(f"{stage.name}: exit {rc} after {time.time() - t0:.0f} s")
            if rc != 0:
                self._record(stage, "failed", command, rc, t0)
                raise StageFailed(stage.name, log, f"exit status {rc}")
            value = None
        else:
            value = self._call(stage, log, t0)
        record = self._record(stage, "ran", command, 0, t0)
        self.values[stage.name] = value
        from labcore.artifacts import atomic_write_text, json_default
        try:
            text = json.dumps({"stage": stage.name, "command": command, "exit_status": 0, "wall_s": record.wall_s,
                               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "value": value},
                              indent=2, default=json_default)
        except TypeError as e:
            record.state = "failed"
            raise StageFailed(stage.name, log, f"its value cannot be kept as JSON ({e})") from e
        atomic_write_text(self.marker_path(stage.name), text + "\n")

    def _call(self, stage: Stage, log: Path, t0: float) -> Any:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f, redirect_stdout(_Tee(sys.stdout, f)), redirect_stderr(_Tee(sys.stderr, f)):
            try:
                return stage.call(dict(self.values))
            except StopRun as stop:
                print(f"stopped: {stop.reason}")
                self.values[stage.name] = stop.value
                self._record(stage, "stopped", None, None, t0)
                raise
            except Exception as e:
                traceback.print_exc(file=f)
                self._record(stage, "failed", None, None, t0)
                # the project's own exceptions say what went wrong in a sentence; a built-in one
                # (KeyError 'k') needs its type to be understood
                what = str(e) if type(e).__module__ != "builtins" and str(e) else f"{type(e).__name__}: {e}"
                raise StageFailed(stage.name, log, what) from e

    def _record(self, stage: Stage, state: str, command, exit_status, t0: float) -> StageRecord:
        record = StageRecord(stage.name, state, command, exit_status, round(time.time() - t0, 1),
                             self.log_path(stage.name))
        self.records.append(record)
        return record


# ---- the same flags for every line's CLI ------------------------------------------------------

def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """--dry-run, --only STAGE and --restart; without them a run resumes, skipping complete stages."""
    group = parser.add_argument_group("stages (a run skips the stages that are complete)")
    group.add_argument("--dry-run", action="store_true",
                       help="print the plan (stages, commands, what is complete, what would run); run and write nothing")
    group.add_argument("--only", metavar="STAGE", default=None,
                       help="run this stage alone (the stages before it must be complete)")
    group.add_argument("--restart", action="store_true", help="redo complete stages instead of skipping them")


def run_pipeline_cli(pipeline: Pipeline, args: argparse.Namespace) -> int:
    """Apply the flags of `add_pipeline_arguments`: print the plan, or run. Returns the exit status:
    0 done, 1 a stage failed, 2 bad usage (unknown stage, --only before its inputs), 3 stopped early."""
    try:
        if args.dry_run:
            print(pipeline.describe_plan(args.only, args.restart), flush=True)
            return EXIT_OK
        pipeline.run(args.only, args.restart)
    except (NotReady, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StageFailed as e:
        print(f"[{pipeline.name}] error: {e}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except StopRun as e:
        print(f"[{pipeline.name}] stopped: {e.reason}", flush=True)
        return EXIT_STOPPED
    return EXIT_OK
