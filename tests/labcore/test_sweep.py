"""labcore.sweep: jobs of a sweep directory, their statuses, and groups of seeds."""

import json

import pytest

from labcore.sweep import DUPLICATE_RULE, find_jobs, group_jobs, read_job, sweep_complete, sweep_plan

REQUIRED = ("loss", "accuracy")


def job(root, name, overrides, metrics=None, manifest_status="completed", error=None, config=None, **manifest_keys):
    """A job as labcore.run leaves it: manifest.json, and metrics.json when given (text or dict)."""
    d = root / name
    d.mkdir(parents=True)
    manifest = {"status": manifest_status, "overrides": overrides, "config": config or {}, **manifest_keys}
    if error:
        manifest["error"] = error
    (d / "manifest.json").write_text(json.dumps(manifest))
    if metrics is not None:
        (d / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    return d


def hydra_job(root, name, overrides, metrics, config_yaml="seed: 5\nmodel:\n  width: 8\n"):
    """A job of any Hydra app: only .hydra/ and metrics.json."""
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / ".hydra" / "config.yaml").write_text(config_yaml)
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


GOOD = {"loss": 0.5, "accuracy": 0.9}


def test_each_status_with_its_problem_in_words(tmp_path):
    job(tmp_path, "0", ["lr=0.1", "seed=0"], GOOD, config={"seed": 0, "lr": 0.1})
    job(tmp_path, "1", ["lr=0.1", "seed=1"], manifest_status="failed", error="RuntimeError: out of memory")
    job(tmp_path, "2", ["lr=0.1", "seed=2"], manifest_status="running")
    job(tmp_path, "3", ["lr=0.2", "seed=0"], '{"loss": 0.5')
    job(tmp_path, "4", ["lr=0.2", "seed=1"], {"loss": 0.4})
    job(tmp_path, "5", ["lr=0.2", "seed=2"], "[1, 2]")
    jobs = {j.path.name: j for j in find_jobs(tmp_path, REQUIRED)}
    assert {n: j.status for n, j in jobs.items()} == {
        "0": "ok", "1": "failed", "2": "missing", "3": "corrupt", "4": "partial", "5": "corrupt"}
    assert jobs["0"].problem == "" and jobs["0"].metrics == GOOD and jobs["0"].ok
    assert "out of memory" in jobs["1"].problem and "no metrics.json" in jobs["1"].problem
    assert "manifest status: running" in jobs["2"].problem
    assert "not valid JSON" in jobs["3"].problem and "not an object" in jobs["5"].problem
    assert jobs["4"].problem == "metrics.json lacks accuracy"
    assert jobs["0"].seed == 0 and jobs["4"].seed == "1"     # from the config, else from the override
    # which metrics are required is the caller's choice
    assert read_job(tmp_path / "4").status == "ok"


def test_a_job_without_a_manifest_is_read_from_hydra_files(tmp_path):
    hydra_job(tmp_path, "0", ["model.width=8", "seed=5"], GOOD)
    (j,) = find_jobs(tmp_path, REQUIRED)
    assert j.status == "ok" and j.overrides == ["model.width=8", "seed=5"]
    assert j.config["model"]["width"] == 8 and j.seed == 5
    never = tmp_path / "never" / ".hydra"
    never.mkdir(parents=True)
    (never / "overrides.yaml").write_text("- seed=9\n")
    by_name = {j.path.name: j for j in find_jobs(tmp_path, REQUIRED)}
    assert by_name["never"].status == "missing" and "never wrote a manifest" in by_name["never"].problem


def test_groups_by_what_varies_except_the_seed(tmp_path):
    for i, (lr, width, seed) in enumerate([(0.1, 8, 0), (0.1, 8, 1), (0.2, 8, 0), (0.2, 8, 1), (0.2, 16, 0)]):
        job(tmp_path, str(i), [f"lr={lr}", f"width={width}", "dataset=tiny", f"seed={seed}",
                               f"hydra.sweep.dir=/x/{i}", f"paths.cache_dir=/c{i}"], GOOD)
    job(tmp_path, "aggregate/inner", ["lr=9"], GOOD)   # outputs of an aggregation are not jobs
    groups = group_jobs(find_jobs(tmp_path, REQUIRED))
    # dataset=tiny is shared by every job: it says nothing about a group, so it is not in the label
    assert list(groups) == ["lr=0.1,width=8", "lr=0.2,width=16", "lr=0.2,width=8"]
    assert [j.seed for j in groups["lr=0.2,width=8"]] == ["0", "1"]
    assert sum(len(g) for g in groups.values()) == 5


def test_one_setting_is_one_group_and_failed_jobs_stay_in_it(tmp_path):
    job(tmp_path, "0", ["width=8", "seed=0"], GOOD)
    job(tmp_path, "1", ["width=8", "seed=1"], manifest_status="failed")
    groups = group_jobs(find_jobs(tmp_path, REQUIRED))
    assert list(groups) == ["all"] and [j.status for j in groups["all"]] == ["ok", "failed"]


def test_sweep_complete_needs_every_job_ok(tmp_path):
    assert not sweep_complete(tmp_path / "absent") and not sweep_complete(tmp_path)   # no jobs yet
    job(tmp_path, "0", ["seed=0"], GOOD)
    assert sweep_complete(tmp_path, REQUIRED)
    job(tmp_path, "1", ["seed=1"], {"loss": 1.0})
    assert sweep_complete(tmp_path) and not sweep_complete(tmp_path, REQUIRED)


@pytest.mark.parametrize("text", ["- [unclosed\n", ": bad: yaml: ["])
def test_an_unreadable_overrides_file_is_a_corrupt_job(tmp_path, text):
    d = tmp_path / "0" / ".hydra"
    d.mkdir(parents=True)
    (d / "overrides.yaml").write_text(text)
    (j,) = find_jobs(tmp_path)
    assert j.status == "corrupt" and "overrides.yaml" in j.problem


def multirun_yaml(root, task, params=None, sweeper="hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                  subdir="${hydra.job.num}"):
    """The part of the multirun.yaml Hydra saves before launching that says which jobs it launches."""
    from omegaconf import OmegaConf
    root.mkdir(parents=True, exist_ok=True)
    OmegaConf.save({"hydra": {"sweep": {"dir": "/elsewhere", "subdir": subdir},
                              "sweeper": {"_target_": sweeper, "max_batch_size": None, "params": params or {}},
                              "overrides": {"hydra": ["hydra.sweep.dir=/elsewhere"], "task": task}},
                    "seed": 0}, root / "multirun.yaml")


def test_the_plan_is_hydras_expansion_of_params_and_task_overrides(tmp_path):
    # sweeper params come first, then the command line; the last override varies fastest; a key
    # given twice keeps its first place and its last value (BasicSweeper.split_arguments)
    multirun_yaml(tmp_path, ["lr=0.1,0.2", "width=8", "seed=0,1"], params={"seed": "42,123", "+depth": "2"})
    plan = sweep_plan(tmp_path)
    assert [(e.num, e.overrides) for e in plan.jobs] == [
        (0, ["seed=0", "+depth=2", "lr=0.1", "width=8"]), (1, ["seed=0", "+depth=2", "lr=0.2", "width=8"]),
        (2, ["seed=1", "+depth=2", "lr=0.1", "width=8"]), (3, ["seed=1", "+depth=2", "lr=0.2", "width=8"])]
    assert [e.path for e in plan.jobs] == [tmp_path / str(i) for i in range(4)]
    assert "lists 4 jobs" in plan.note


def test_a_plan_cannot_be_known_without_multirun_yaml_or_with_another_sweeper(tmp_path):
    assert sweep_plan(tmp_path).jobs is None and "no multirun.yaml" in sweep_plan(tmp_path).note
    multirun_yaml(tmp_path, ["lr=0.1,0.2"], sweeper="hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    assert sweep_plan(tmp_path).jobs is None and "as it runs" in sweep_plan(tmp_path).note
    (tmp_path / "multirun.yaml").write_text("hydra: [unclosed\n")
    assert sweep_plan(tmp_path).jobs is None and "cannot be expanded" in sweep_plan(tmp_path).note


def test_jobs_launched_but_never_started_are_listed(tmp_path):
    multirun_yaml(tmp_path, ["lr=0.1,0.2", "seed=0,1"])
    job(tmp_path, "0", ["lr=0.1", "seed=0"], GOOD)
    job(tmp_path, "3", ["lr=0.2", "seed=1"], manifest_status="failed")     # started: already reported as failed
    assert not sweep_complete(tmp_path, REQUIRED)
    jobs = find_jobs(tmp_path, REQUIRED)
    assert sorted((j.path.name, j.status) for j in jobs) == [
        ("0", "ok"), ("1", "not_started"), ("2", "not_started"), ("3", "failed")]
    never = {j.path.name: j for j in jobs if j.status == "not_started"}
    assert never["1"].overrides == ["lr=0.1", "seed=1"] and never["1"].seed == "1"
    assert "launched as job 1 of 4" in never["1"].problem and never["2"].group == "lr=0.2"
    # once every launched job has finished, the sweep is complete
    (tmp_path / "3" / "metrics.json").write_text(json.dumps(GOOD))
    job(tmp_path, "1", ["lr=0.1", "seed=1"], GOOD)
    job(tmp_path, "2", ["lr=0.2", "seed=0"], GOOD)
    assert sweep_complete(tmp_path, REQUIRED)


def test_two_finished_jobs_of_one_seed_are_settled_by_finish_time(tmp_path):
    # logger does not change what a job computes, so both runs of seed 0 fall in one group
    job(tmp_path, "0", ["lr=0.1", "logger=csv", "seed=0"], GOOD, started_at="2025-01-01T10:00:00+0000",
        wall_time_s=600.0)
    job(tmp_path, "1", ["lr=0.1", "logger=wandb", "seed=0"], GOOD, started_at="2025-01-01T10:05:00+0000",
        wall_time_s=60.0)   # started later, finished earlier (10:06 vs 10:10)
    job(tmp_path, "2", ["lr=0.1", "logger=csv", "seed=1"], GOOD)
    jobs = {j.path.name: j for j in find_jobs(tmp_path, REQUIRED)}
    assert len({j.group for j in jobs.values()}) == 1
    assert [jobs[n].status for n in "012"] == ["ok", "duplicate", "ok"]
    assert jobs["1"].duplicate_of == tmp_path / "0" and str(tmp_path / "0") in jobs["1"].problem
    assert "excluded from statistics" in jobs["1"].problem and "finished last" in DUPLICATE_RULE
    assert sweep_complete(tmp_path, REQUIRED)    # a settled duplicate is a finished job


def test_without_times_in_the_manifest_the_later_metrics_file_counts(tmp_path):
    import os
    for name in ("a", "b"):
        job(tmp_path, name, ["seed=3"], GOOD)
    os.utime(tmp_path / "b" / "metrics.json", (1_000, 1_000))    # b finished long before a
    jobs = {j.path.name: j for j in find_jobs(tmp_path, REQUIRED)}
    assert (jobs["a"].status, jobs["b"].status) == ("ok", "duplicate") and jobs["b"].duplicate_of == tmp_path / "a"


CALLS = []


def record_call(sweep_dir, **kwargs):
    CALLS.append((sweep_dir, kwargs))


def test_the_multirun_callback_hands_the_sweep_dir_to_the_configured_function():
    from omegaconf import OmegaConf

    from labcore.sweep_callback import CallOnMultirunEnd
    config = OmegaConf.create({"hydra": {"sweep": {"dir": "/sweeps/7"}}})
    CALLS.clear()
    CallOnMultirunEnd(function=f"{__name__}.record_call", matching=False).on_multirun_end(config)
    CallOnMultirunEnd(function=f"{__name__}.record_call", enabled=False).on_multirun_end(config)
    assert CALLS == [("/sweeps/7", {"matching": False})]
