"""What the dashboards receive at the end of a job (`labcore.loggers.report_to_loggers`), read back
from what the loggers wrote: the config to group and filter a sweep by, the final metrics as the
run's summary, the figures as images. W&B runs offline; its `.wandb` file is parsed by wandb_records."""

import json

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from labcore import run
from tests.labcore.wandb_records import config_of, history_of, read_finished_run, summary_of


def wandb_run_dir(out):
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    return run_dir


def tensorboard_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def tensorboard_hparams(acc) -> tuple[dict, list[str]]:
    """The hparams of the run's session (the first one written: the one TensorBoard shows) and the
    metric names of its experiment."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return values, [m.name.tag for m in experiment.metric_infos]


def assert_wandb_media_are_the_figures(run_dir, summary, figures):
    for png in figures:
        entry = summary[f"figures/{png.stem}.path"]
        assert summary[f"figures/{png.stem}._type"] == "image-file"
        assert (run_dir / "files" / entry).read_bytes() == png.read_bytes()


def assert_tensorboard_images_are_the_figures(acc, figures):
    assert sorted(acc.Tags()["images"]) == sorted(f"figures/{p.stem}" for p in figures)
    for png in figures:
        (event,) = acc.Images(f"figures/{png.stem}")
        assert (event.width, event.height) == Image.open(png).size


@pytest.mark.slow
def test_wandb_receives_config_summary_and_figures(offline, tiny_cfg, tmp_path):
    cfg = tiny_cfg("logger=wandb", "seed=5")
    metrics = run(cfg)
    out = tmp_path / "out"
    run_dir = wandb_run_dir(out)
    records = read_finished_run(run_dir)
    config = config_of(records)
    assert config["seed"] == 5 and config["sae"]["k"] == 4  # nested: W&B groups and filters by sae.k
    summary = summary_of(records)
    for key, value in metrics.items():
        assert summary[key] == pytest.approx(value)
    history = history_of(records)
    assert not any("explained_variance" in h for h in history)  # the summary, not one more step
    every = cfg.trainer.log_every_n_steps  # per-step training logging is intact
    assert [h["trainer/global_step"] for h in history if "train/loss" in h] == \
        list(range(every - 1, int(metrics["train_steps"]), every))
    figures = sorted((out / "figures").glob("*.png"))
    assert {p.stem for p in figures} == {"training_curves", "latent_density"}
    assert_wandb_media_are_the_figures(run_dir, summary, figures)


@pytest.mark.slow
def test_tensorboard_receives_hparams_final_scalars_and_figures(tiny_cfg, tmp_path):
    cfg = tiny_cfg("logger=tensorboard", "seed=5")
    metrics = run(cfg)
    out = tmp_path / "out"
    acc = tensorboard_events(out / "tensorboard")
    hparams, metric_names = tensorboard_hparams(acc)
    assert hparams["seed"] == 5 and hparams["sae/k"] == 4
    assert metric_names == list(metrics)
    for key, value in metrics.items():
        assert [(s.step, s.value) for s in acc.Scalars(key)] == [(0, pytest.approx(value, rel=1e-6))]
    every = cfg.trainer.log_every_n_steps
    assert [s.step for s in acc.Scalars("train/loss")] == list(range(every - 1, int(metrics["train_steps"]), every))
    assert_tensorboard_images_are_the_figures(acc, sorted((out / "figures").glob("*.png")))
    assert yaml.safe_load((out / "tensorboard" / "hparams.yaml").read_text())["sae"]["k"] == 4
    # the CSV logger beside it: config in hparams.yaml, metrics.csv per step only
    assert yaml.safe_load((out / "logs" / "hparams.yaml").read_text())["seed"] == 5
    header = (out / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/loss" in header and not set(metrics) & set(header)


def test_analysis_only_job_reports_to_its_loggers(offline, tmp_path):
    """No trainer: the loggers get config, summary and figures all the same."""
    out = tmp_path / "out"
    loggers = {
        "csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(out), "name": "logs", "version": ""},
        "tensorboard": {"_target_": "lightning.pytorch.loggers.TensorBoardLogger", "save_dir": str(out),
                        "name": "tensorboard", "version": ""},
        "wandb": {"_target_": "labcore.loggers.wandb", "project": "interp-lab-test", "save_dir": str(out), "name": "tiny"}}
    metrics = run(OmegaConf.create({"name": "tiny", "seed": 3, "n": 500, "paths": {"output_dir": str(out)},
                                    "task": {"_target_": "tests.labcore.tiny_analysis.NoiseStatistics"},
                                    "logger": loggers, "callbacks": {}}))
    figures = [out / "figures" / "noise.png"]

    run_dir = wandb_run_dir(out)
    records = read_finished_run(run_dir)
    assert config_of(records)["n"] == 500 and config_of(records)["task"]["_target_"].endswith("NoiseStatistics")
    summary = summary_of(records)
    assert {k: summary[k] for k in metrics} == metrics
    assert_wandb_media_are_the_figures(run_dir, summary, figures)

    acc = tensorboard_events(out / "tensorboard")
    hparams, metric_names = tensorboard_hparams(acc)
    assert hparams["n"] == 500 and hparams["seed"] == 3 and metric_names == list(metrics)
    assert acc.Scalars("mean")[0].value == pytest.approx(metrics["mean"])
    assert_tensorboard_images_are_the_figures(acc, figures)

    assert yaml.safe_load((out / "logs" / "hparams.yaml").read_text())["n"] == 500
    assert not (out / "logs" / "metrics.csv").exists()  # final metrics stay out of the per-step CSV
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_any_other_logger_gets_hyperparams_and_metrics():
    from lightning.pytorch.loggers import Logger

    from labcore.loggers import report_to_loggers

    class Recording(Logger):
        name, version = "recording", 0
        calls = []

        def log_hyperparams(self, params, *args, **kwargs):
            self.calls.append(("hparams", params))

        def log_metrics(self, metrics, step=None):
            self.calls.append(("metrics", metrics))

        def finalize(self, status):
            self.calls.append(("finalize", status))

    logger = Recording()
    report_to_loggers([logger], {"sae": {"k": 4}}, {"ev": 0.9}, [])
    assert logger.calls == [("hparams", {"sae": {"k": 4}}), ("metrics", {"ev": 0.9}), ("finalize", "success")]
