"""Reading a Hydra sweep directory: its jobs, what became of each, and their groups of seeds.

A job is a directory holding a `manifest.json` (written by `labcore.run`) or a
`.hydra/overrides.yaml` (any Hydra job). Each job's status says whether its result can be used:

    ok       metrics.json is a JSON object with every required metric as a number
    failed   no metrics.json, and its manifest says the job failed (with the error, if recorded)
    missing  no metrics.json otherwise (still running, killed, or never started)
    corrupt  metrics.json (or overrides.yaml) cannot be parsed
    partial  metrics.json parses but lacks a required metric

Which metrics are required is the caller's: each line knows what its jobs must report.
Jobs are grouped by their overrides except the seed (and keys that only say where or how a job
ran), so the seeds of one setting form one group; the group label lists only the overrides that
vary across the sweep ("all" when nothing does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# overrides that do not change what a job computes: its seed, and where or how it ran
NON_GROUPING_KEYS = ("seed", "hydra.", "hydra/", "paths.", "logger", "trainer.enable_progress_bar")
# output folders inside a sweep directory that hold no jobs (the aggregate writes there)
NON_JOB_DIRS = ("aggregate",)


@dataclass
class Job:
    path: Path
    overrides: list[str]
    config: dict = field(default_factory=dict)     # resolved where it can be (see read_job)
    status: str = "ok"                              # ok | failed | missing | corrupt | partial
    problem: str = ""                               # what is wrong, in words; "" when ok
    metrics: dict = field(default_factory=dict)
    group: str = "all"                              # set by label_groups

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


def read_job(job_dir: str | Path, required_metrics: Sequence[str] = ()) -> Job:
    """One job directory: overrides, config, seed, status (with the problem in words) and metrics."""
    job_dir = Path(job_dir)
    manifest = _read_manifest(job_dir)
    try:
        overrides = _read_overrides(job_dir, manifest)
    except Exception as e:
        return Job(job_dir, [], status="corrupt", problem=f".hydra/overrides.yaml cannot be read ({e})")
    job = Job(job_dir, overrides, config=_read_config(job_dir, manifest))
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


def find_jobs(sweep_dir: str | Path, required_metrics: Sequence[str] = (),
              non_grouping_keys: Sequence[str] = NON_GROUPING_KEYS,
              non_job_dirs: Sequence[str] = NON_JOB_DIRS) -> list[Job]:
    """Every job of a sweep directory, read and labelled with its group."""
    jobs = [read_job(d, required_metrics) for d in job_dirs(sweep_dir, non_job_dirs)]
    label_groups(jobs, non_grouping_keys)
    return jobs


def group_jobs(jobs: list[Job]) -> dict[str, list[Job]]:
    """{group label: its jobs}, labels sorted; every job appears, whatever its status."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    return dict(sorted(groups.items()))


def sweep_complete(sweep_dir: str | Path, required_metrics: Sequence[str] = ()) -> bool:
    """True when the sweep directory holds at least one job and every job is ok.

    It cannot tell a sweep whose launcher died before starting some jobs: those never made a
    directory. Pipelines therefore also record that the sweep command itself finished
    (`labcore.orchestrate` done-markers)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return False
    jobs = [read_job(d, required_metrics) for d in job_dirs(sweep_dir)]
    return bool(jobs) and all(j.ok for j in jobs)
