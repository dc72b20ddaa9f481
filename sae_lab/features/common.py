"""What every step of the feature pipeline checks and finds: the model spec and its layers, the
labelled dataset, and where the pipeline keeps each step's output under `features.dir`."""

from __future__ import annotations

from pathlib import Path

from labcore.validate import ConfigError, get, instantiate_or_explain, optional, parse_layers, positive_int, require


def pipeline_dir(cfg) -> Path:
    return Path(require(cfg, "features.dir", lambda v: isinstance(v, str) and v, "must be a directory path"))


def extraction_dir(cfg) -> Path:
    return pipeline_dir(cfg) / "extraction"


def sae_dir(cfg, layer: int) -> Path:
    """Where layer `layer`'s SAE job runs (its SAE is saved in <this>/sae)."""
    return pipeline_dir(cfg) / "sae" / f"layer_{layer}"


def analysis_dir(cfg, layer: int) -> Path:
    return pipeline_dir(cfg) / "analysis" / f"layer_{layer}"


def model_spec(cfg):
    spec = instantiate_or_explain(cfg, "model")
    if not (hasattr(spec, "layout") and hasattr(spec, "load")):
        raise ConfigError("model", f"{type(spec).__name__} is not a pretrained model to extract from: use "
                          "hf_minilm, hf_gpt2, gpt_char, hf_gemma3_4b_it, ...")
    return spec


def dataset(cfg):
    data = instantiate_or_explain(cfg, "dataset")
    if not (hasattr(data, "labels") and hasattr(data, "batch")):
        raise ConfigError("dataset", f"{type(data).__name__} is not a labelled dataset: use group_sentences, "
                          "labelled_text (dataset.path=table.csv) or image_caption")
    return data


def layers(cfg, n_layers: int) -> list[int]:
    return parse_layers(get(cfg, "features.layers"), n_layers, "features.layers")


def layer(cfg, n_layers: int) -> int:
    """The one layer a per-layer job works on; it must be among features.layers."""
    value = get(cfg, "layer")
    chosen = layers(cfg, n_layers)
    if not isinstance(value, int) or isinstance(value, bool) or value not in chosen:
        raise ConfigError("layer", f"must be one of the extracted layers {chosen} (features.layers), got {value!r}")
    return value


def extract_settings(cfg) -> dict:
    from labcore.activations import STORAGE_DTYPES
    from labcore.layer_extraction import TOKEN_MODES
    return {"batch_size": positive_int(cfg, "extract.batch_size"),
            "max_length": optional(positive_int, cfg, "extract.max_length"),   # null: whole samples
            "dtype": require(cfg, "extract.dtype", lambda v: v in STORAGE_DTYPES, f"must be one of {list(STORAGE_DTYPES)}"),
            "tokens": require(cfg, "extract.tokens", lambda v: v in TOKEN_MODES, f"must be one of {list(TOKEN_MODES)}"),
            "checkpoint_every": positive_int(cfg, "extract.checkpoint_every")}
