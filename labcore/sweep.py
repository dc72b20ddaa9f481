"""Reading a Hydra sweep directory: its jobs, what became of each, and their groups of seeds.

A job is a directory holding a `manifest.json` (written by `labcore.run`) or a
`.hydra/overrides.yaml` (any Hydra job). Each job's status says whether its result can be used:

    ok           metrics.json is a JSON object with every required metric as a number
    failed       no metrics.json, and its manifest says the job failed (with the error, if recorded)
    missing      no metrics.json otherwise (still running, killed, or died before finishing)
    corrupt      metrics.json (or overrides.yaml) cannot be parsed
    partial      metrics.json parses but lacks a required metric
    not_started  the sweep launched it (`multirun.yaml`) but it left no job directory
    duplicate    ok, but another ok job of its group has the same seed and finished later: only
                 that one counts (`mark_duplicates`; `duplicate_of` names it)

Which metrics are required is the caller's: each line knows what its jobs must report.
Jobs are grouped by their overrides except the seed (and keys that only say where or how a job
ran), so the seeds of one setting form one group; the group label lists only the overrides that
vary across the sweep ("all" when nothing does).

The jobs a sweep launched are computed from `<sweep_dir>/multirun.yaml` (the config Hydra saves
before launching) by Hydra's own override parser and BasicSweeper expansion (`sweep_plan`), so a
job that never made a directory is listed too, not just absent.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Sequence

# overrides that do not change what a job computes: its seed, and where or how it ran
NON_GROUPING_KEYS = ("seed", "hydra.", "hydra/", "paths.", "logger", "trainer.enable_progress_bar")
# output folders inside a sweep directory that hold no jobs (the aggregate writes there)
NON_JOB_DIRS = ("aggregate",)
MULTIRUN_FILE = "multirun.yaml"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
DUPLICATE_RULE = ("of finished jobs with the same group and seed, the one that finished last counts (its manifest's "
                  "started_at + wall_time_s, else its metrics.json's modification time; equal times: the later "
                  "directory name); the others are excluded from statistics")


@dataclass
class Job:
    path: Path
    overrides: list[str]
    config: dict = field(default_factory=dict)     # resolved where it can be (see read_job)
    status: str = "ok"                              # see the module docstring
    problem: str = ""                               # what is wrong, in words; "" when ok
    metrics: dict = field(default_factory=dict)
    group: str = "all"                              # set by label_groups
    finished: float | None = None                   # when it finished, epoch seconds (see finish_time)
    duplicate_of: Path | None = None                # the job counted instead of this one (mark_duplicates)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def seed(self):
        return self.config.get("seed", override_value(self.overrides, "seed"))

    def grouping_overrides(self, non_grouping_keys: Sequence[str] = NON_GROUPING_KEYS) -> list[str]:
        return sorted(o for o in self.overrides if not override_key(o).startswith(tuple(non_grouping_keys)))


def override_key(override: str) -> str:
    """`+a.b=1` -> `a.b`: the config key an override sets, without Hydra's +/~/++ prefixes."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(overrides: Sequence[str], key: str) -> str | None:
    for o in overrides:
        if override_key(o) == key and "=" in o:
            return o.split("=", 1)[1]
    return None


def _read_manifest(job_dir: Path) -> dict | None:
    try:
        return json.loads((job_dir / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None  # the job is then judged by its metrics.json alone


def _read_overrides(job_dir: Path, manifest: dict | None) -> list[str]:
    if manifest and manifest.get("overrides"):
        return list(manifest["overrides"])
    path = job_dir / ".hydra" / "overrides.yaml"
    if path.exists():
        from omegaconf import OmegaConf
        return [str(o) for o in OmegaConf.load(path)]
    return []


def _read_config(job_dir: Path, manifest: dict | None) -> dict:
    if manifest and manifest.get("config"):
        return manifest["config"]   # labcore.run records the resolved config
    path = job_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf
    try:
        cfg = OmegaConf.load(path)
    except Exception:
        return {}
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:   # ${hydra:...} and friends only resolve inside the job that wrote it
        return OmegaConf.to_container(cfg, resolve=False)


def finish_time(job_dir: Path, manifest: dict | None) -> float | None:
    """When a job finished, in epoch seconds: its manifest's `finished_at` (ISO 8601) if it has one,
    else `started_at` + `wall_time_s`, else the modification time of its metrics.json; None when
    none of these exists (the job did not finish)."""
    manifest = manifest or {}
    try:
        if manifest.get("finished_at"):
            return datetime.fromisoformat(str(manifest["finished_at"])).timestamp()
        if manifest.get("started_at") and isinstance(manifest.get("wall_time_s"), (int, float)):
            return datetime.fromisoformat(str(manifest["started_at"])).timestamp() + manifest["wall_time_s"]
    except ValueError:
        pass   # an unreadable time: fall back to the file system
    try:
        return os.stat(job_dir / "metrics.json").st_mtime
    except OSError:
        return None


def read_job(job_dir: str | Path, required_metrics: Sequence[str] = ()) -> Job:
    """One job directory: overrides, config, seed, status (with the problem in words) and metrics."""
    job_dir = Path(job_dir)
    manifest = _read_manifest(job_dir)
    try:
        overrides = _read_overrides(job_dir, manifest)
    except Exception as e:
        return Job(job_dir, [], status="corrupt", problem=f".hydra/overrides.yaml cannot be read ({e})")
    job = Job(job_dir, overrides, config=_read_config(job_dir, manifest), finished=finish_time(job_dir, manifest))
    metrics_path = job_dir / "metrics.json"
    if not metrics_path.exists():
        status = (manifest or {}).get("status", "never wrote a manifest")
        error = (manifest or {}).get("error")
        job.status = "failed" if status == "failed" else "missing"
        job.problem = f"no metrics.json (manifest status: {status}{'; ' + error if error else ''})"
        return job
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as e:
        job.status, job.problem = "corrupt", f"metrics.json is not valid JSON ({e.msg})"
        return job
    except UnicodeDecodeError as e:
        job.status, job.problem = "corrupt", f"metrics.json is not valid JSON ({e})"
        return job
    if not isinstance(metrics, dict):
        job.status, job.problem = "corrupt", "metrics.json is not valid JSON (not an object)"
        return job
    job.metrics = metrics
    absent = [k for k in required_metrics if not isinstance(metrics.get(k), (int, float))]
    if absent:
        job.status, job.problem = "partial", f"metrics.json lacks {', '.join(absent)}"
    return job


def job_dirs(sweep_dir: str | Path, non_job_dirs: Sequence[str] = NON_JOB_DIRS) -> list[Path]:
    """Every directory under `sweep_dir` that holds a job, sorted."""
    sweep_dir = Path(sweep_dir)
    dirs = ({p.parent for p in sweep_dir.rglob("manifest.json")} |
            {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")})
    return sorted(d for d in dirs if not set(d.relative_to(sweep_dir).parts) & set(non_job_dirs))


def label_groups(jobs: list[Job], non_grouping_keys: Sequence[str] = NON_GROUPING_KEYS) -> None:
    """Set each job's `group`: its grouping overrides that are not shared by every job of the sweep
    (a shared override says nothing about a group), comma-joined; "all" when nothing varies."""
    if not jobs:
        return
    per_job = [j.grouping_overrides(non_grouping_keys) for j in jobs]
    shared = set.intersection(*(set(o) for o in per_job))
    for job, overrides in zip(jobs, per_job):
        job.group = ",".join(o for o in overrides if o not in shared) or "all"


class ExpectedJob(NamedTuple):
    num: int               # Hydra's job number (hydra.job.num): launch order, the last override fastest
    overrides: list[str]   # as the job receives them (its .hydra/overrides.yaml)
    path: Path             # the directory Hydra gives it


class SweepPlan(NamedTuple):
    jobs: list[ExpectedJob] | None   # None when they cannot be known; `note` says why
    note: str


def sweep_plan(sweep_dir: str | Path) -> SweepPlan:
    """The jobs a Hydra multirun launched, from `<sweep_dir>/multirun.yaml`.

    BasicSweeper.sweep parses `hydra.sweeper.params` (as `key=value`) followed by the command-line
    task overrides (`hydra.overrides.task`) and expands them with `BasicSweeper.split_arguments`
    (cartesian product, the last override varying fastest; a key given twice keeps its first place
    and its last value); job numbers run across batches. The same calls are made here, so the job
    list and each job's overrides are Hydra's own. Other sweepers choose their jobs as they go
    (e.g. Optuna), so for them, as without multirun.yaml, `jobs` is None.
    """
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / MULTIRUN_FILE
    if not path.exists():
        return SweepPlan(None, f"no {MULTIRUN_FILE}: which jobs the sweep launched is unknown")
    from omegaconf import OmegaConf
    try:
        # unresolved: ${hydra.job.num} and friends only resolve inside a job
        hydra = OmegaConf.to_container(OmegaConf.load(path), resolve=False)["hydra"]
        target = hydra["sweeper"].get("_target_")
        if target != BASIC_SWEEPER:
            return SweepPlan(None, f"the sweeper {target} chooses its jobs as it runs: "
                                   "which jobs it launched is unknown")
        params = hydra["sweeper"].get("params") or {}
        task = hydra["overrides"]["task"]
        subdir = hydra["sweep"].get("subdir", "${hydra.job.num}")
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser
        overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(task))
        batches = BasicSweeper.split_arguments(overrides, None)
    except Exception as e:   # a truncated file, or a sweep value that needs the app's config (glob)
        return SweepPlan(None, f"{MULTIRUN_FILE} cannot be expanded into jobs ({type(e).__name__}: {e})")
    flat = [job for batch in batches for job in batch]
    return SweepPlan([ExpectedJob(num, list(o), sweep_dir / _subdir(subdir, num)) for num, o in enumerate(flat)],
                     f"{MULTIRUN_FILE} lists {len(flat)} jobs")


def _subdir(subdir: str, num: int) -> str:
    """A job's directory name: `hydra.sweep.subdir` with `hydra.job.num` filled in. Subdirs built from
    other job keys (override_dirname, ...) are not resolved here: the job number stands in."""
    from omegaconf import OmegaConf
    try:
        return str(OmegaConf.create({"hydra": {"job": {"num": num}}, "subdir": subdir}).subdir)
    except Exception:
        return str(num)


def not_started(jobs: list[Job], plan: list[ExpectedJob]) -> list[Job]:
    """A `not_started` Job for every planned job that no found job matches by its overrides (order
    aside; a sweep may list one override set twice, so they are counted, not just looked up)."""
    found = Counter(tuple(sorted(j.overrides)) for j in jobs)
    absent = []
    for expected in plan:
        key = tuple(sorted(expected.overrides))
        if found[key] > 0:
            found[key] -= 1
            continue
        absent.append(Job(expected.path, list(expected.overrides), status="not_started",
                          problem=f"launched as job {expected.num} of {len(plan)} ({MULTIRUN_FILE}) but never "
                                  f"started: no manifest.json or .hydra/overrides.yaml"))
    return absent


def mark_duplicates(jobs: list[Job]) -> list[tuple[Job, Job]]:
    """Settle ok jobs that share a group and a seed (`DUPLICATE_RULE`): the one that finished last
    stays ok, each other one becomes `duplicate` with `duplicate_of` and `problem` naming it.
    Returns [(excluded, kept)]. Needs groups labelled (`label_groups`)."""
    by_key: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        if job.ok:
            by_key.setdefault((job.group, str(job.seed)), []).append(job)
    pairs = []
    for same in by_key.values():
        if len(same) < 2:
            continue
        # an unknown finish time sorts first: a job that says when it finished is the better record
        same.sort(key=lambda j: (j.finished if j.finished is not None else float("-inf"), str(j.path)))
        kept = same[-1]
        for job in same[:-1]:
            job.status, job.duplicate_of = "duplicate", kept.path
            job.problem = (f"same group and seed ({job.seed}) as {kept.path}, which finished later: "
                           f"excluded from statistics")
            pairs.append((job, kept))
    return pairs


def find_jobs(sweep_dir: str | Path, required_metrics: Sequence[str] = (),
              non_grouping_keys: Sequence[str] = NON_GROUPING_KEYS,
              non_job_dirs: Sequence[str] = NON_JOB_DIRS) -> list[Job]:
    """Every job of a sweep directory, read and labelled with its group; jobs its multirun.yaml
    launched without a directory are included as `not_started`, and duplicate seeds are settled
    (`mark_duplicates`)."""
    jobs = [read_job(d, required_metrics) for d in job_dirs(sweep_dir, non_job_dirs)]
    plan = sweep_plan(sweep_dir).jobs
    if plan is not None:
        jobs += not_started(jobs, plan)
    label_groups(jobs, non_grouping_keys)
    mark_duplicates(jobs)
    return jobs


def group_jobs(jobs: list[Job]) -> dict[str, list[Job]]:
    """{group label: its jobs}, labels sorted; every job appears, whatever its status."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    return dict(sorted(groups.items()))


def sweep_complete(sweep_dir: str | Path, required_metrics: Sequence[str] = ()) -> bool:
    """True when the sweep directory holds at least one job, every job is ok (or a settled
    duplicate of one), and every job its multirun.yaml launched has a directory.

    Without multirun.yaml (or with a sweeper that chooses jobs as it goes) a job that never made
    a directory cannot be seen, so pipelines also record that the sweep command itself finished
    (`labcore.orchestrate` done-markers)."""
    if not Path(sweep_dir).is_dir():
        return False
    jobs = find_jobs(sweep_dir, required_metrics)
    return bool(jobs) and all(j.ok or j.status == "duplicate" for j in jobs)
