"""labcore.sweep: jobs of a sweep directory, their statuses, and groups of seeds."""

import json

import pytest

from labcore.sweep import find_jobs, group_jobs, read_job, sweep_complete

REQUIRED = ("loss", "accuracy")


def job(root, name, overrides, metrics=None, manifest_status="completed", error=None, config=None):
    """A job as labcore.run leaves it: manifest.json, and metrics.json when given (text or dict)."""
    d = root / name
    d.mkdir(parents=True)
    manifest = {"status": manifest_status, "overrides": overrides, "config": config or {}}
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
