"""`gpt_char`: the framework's own causal GPT trained as a character-level language model.

Analysis jobs need a real trained causal model that is there offline, with no hub download. This
spec trains `labcore.models.gpt.GPT` on a local text file (tiny Shakespeare in the preset) the first
time it is loaded, with Lightning through `labcore.fit.build_trainer`, and caches the result by
content hash under `cache_dir` (`labcore.store.cached`): the key is every training field plus the
corpus file's sha256 and size, so every later job, and every job of a sweep, loads the same weights.

    spec = CharGPT(corpus="data/tinyshakespeare/input.txt", cache_dir=".cache")
    spec.layout()              # no I/O
    lm = spec.load()           # trains once (the preset: ~70 s on a 2-core CPU), then reads the cache
    lm.forward(lm.encode(["ROMEO:", "JULIET:"], max_length=64))

The model takes no attention mask, so `encode` pads nothing: it cuts every text of a batch to the
length of the shortest one (and to `block_size`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from labcore.artifacts import sha256_file
from labcore.models.gpt import GPT, GPTConfig, load_gpt, save_gpt
from labcore.models.pretrained import AttentionLayout, LanguageModel, resolve_device
from labcore.validate import ConfigError, fraction, optional, positive_int, positive_number, require, seed_value

KIND = "char_gpt"     # the cache's folder for these models
RECIPE = 1            # bump when the training code changes what a given config learns
VAL_BATCH = 64        # windows per forward pass when measuring the validation loss


class CharGPT:
    """Spec of a character-level GPT (see the module docstring). `key` is the config key prefix named
    in errors, e.g. "model" -> "model.n_head". `device` is where it trains and runs; it is not part
    of the cache key (the recipe, not the hardware, defines the model)."""

    TRAINING_FIELDS = ("n_layer", "n_head", "d_model", "d_mlp", "block_size", "act", "steps", "batch_size",
                       "lr", "weight_decay", "val_frac", "seed", "max_chars")

    def __init__(self, corpus: str, url: str | None = None, cache_dir: str = ".cache", n_layer: int = 2,
                 n_head: int = 4, d_model: int = 128, d_mlp: int = 512, block_size: int = 128, act: str = "relu",
                 steps: int = 700, batch_size: int = 32, lr: float = 3e-3, weight_decay: float = 0.1,
                 val_frac: float = 0.1, seed: int = 0, device: str = "auto", max_chars: int | None = None,
                 key: str = "model"):
        self.corpus, self.url, self.cache_dir, self.device, self.key = str(corpus), url, str(cache_dir), device, key
        self.n_layer, self.n_head, self.d_model, self.d_mlp = n_layer, n_head, d_model, d_mlp
        self.block_size, self.act, self.steps, self.batch_size = block_size, act, steps, batch_size
        self.lr, self.weight_decay, self.val_frac = lr, weight_decay, val_frac
        self.seed, self.max_chars = seed, max_chars
        self._validate()

    def _validate(self) -> None:
        # the shared checks of labcore.validate, on the fields placed under the key they are configured at
        cfg = OmegaConf.create()
        OmegaConf.update(cfg, self.key, {f: getattr(self, f) for f in (*self.TRAINING_FIELDS, "device")},
                         force_add=True)
        k = f"{self.key}."
        for name in ("n_layer", "n_head", "d_model", "d_mlp", "block_size", "steps", "batch_size"):
            positive_int(cfg, k + name)
        if self.d_model % self.n_head:
            raise ConfigError(k + "n_head", f"must divide {k}d_model={self.d_model} (got {self.n_head})")
        require(cfg, k + "act", lambda v: v in ("relu", "gelu"), "must be 'relu' or 'gelu'")
        positive_number(cfg, k + "lr")
        require(cfg, k + "weight_decay", lambda v: isinstance(v, (int, float)) and v >= 0, "must be >= 0")
        fraction(cfg, k + "val_frac")
        seed_value(cfg, k + "seed")
        optional(positive_int, cfg, k + "max_chars")
        try:
            resolve_device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(k + "device",
                              f"must be 'auto', 'cpu', 'cuda' or 'cuda:<n>' (got {self.device!r})") from None

    def layout(self) -> AttentionLayout:
        return AttentionLayout(n_layers=self.n_layer, n_heads=self.n_head, n_kv_heads=self.n_head,
                               d_head=self.d_model // self.n_head, causal=True)

    def cache_key(self, corpus: Path) -> dict:
        """What the trained weights are a function of: the recipe, its fields, and the corpus's bytes."""
        return {"recipe": RECIPE, **{f: getattr(self, f) for f in self.TRAINING_FIELDS},
                "corpus": {"sha256": sha256_file(corpus), "size": corpus.stat().st_size}}

    def load(self) -> LanguageModel:
        from labcore.datasets.text import corpus_path
        from labcore.store import cached, entry_dir

        corpus = corpus_path(self.corpus, self.url)
        key = self.cache_key(corpus)
        where = entry_dir(self.cache_dir, KIND, key)
        entry = cached(self.cache_dir, KIND, key, lambda tmp: train(self, corpus, tmp, where))
        model, info = load_gpt(entry)
        model = model.to(resolve_device(self.device))
        index = {c: i for i, c in enumerate(info["chars"])}
        block_size = model.cfg.block_size

        def encode(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
            texts = list(texts)
            if not texts:
                raise ValueError("encode needs at least one text")
            n = min(max_length, block_size, *(len(t) for t in texts))
            if n <= 0:
                raise ValueError(f"cannot encode an empty text (or max_length={max_length}) for gpt_char: every text "
                                 "of a batch is cut to the shortest, and the model takes no padding")
            ids = []
            for i, text in enumerate(texts):
                # only the characters the model will read must be known
                unknown = next((c for c in text[:n] if c not in index), None)
                if unknown is not None:
                    raise ValueError(f"character {unknown!r} (text {i}) is not in gpt_char's vocabulary of "
                                     f"{len(index)} characters: the model was trained on {self.corpus}")
                ids.append([index[c] for c in text[:n]])
            input_ids = torch.tensor(ids, dtype=torch.long)
            return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

        return LanguageModel(model, self.layout(), encode, name="gpt_char", takes_attention_mask=False)


def train(spec: CharGPT, corpus: Path, out_dir: Path, final_dir: Path | None = None) -> dict:
    """Fit the spec's GPT on the corpus's train split (random windows, next-character cross-entropy,
    AdamW), measure the validation split, and `save_gpt` it into `out_dir`; returns the summary."""
    import lightning as L   # here, not at the top: a 4 s import that loading a cached model never needs

    from labcore.datasets.text import CharText
    from labcore.fit import build_trainer

    data = CharText(corpus, spec.block_size, val_frac=spec.val_frac, max_chars=spec.max_chars)
    # a forked RNG: the caller's random state is the same whether the model was cached or trained now
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = GPT(GPTConfig(vocab_size=data.vocab_size, block_size=spec.block_size, n_layer=spec.n_layer,
                              n_head=spec.n_head, d_model=spec.d_model, d_mlp=spec.d_mlp, act=spec.act))

    class NextChar(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.losses = model, []

        def training_step(self, batch, _):
            x, y = batch
            loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, spec.steps))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    class Windows:
        """`steps` batches of random train windows, drawn from a generator seeded by `seed`."""

        def __len__(self):
            return spec.steps

        def __iter__(self):
            generator = torch.Generator().manual_seed(spec.seed)
            return (data.batch("train", spec.batch_size, generator) for _ in range(spec.steps))

    device = resolve_device(spec.device)
    trainer_cfg = OmegaConf.create({
        "_target_": "lightning.pytorch.Trainer", "devices": [device.index] if device.index is not None else 1,
        "accelerator": "gpu" if device.type == "cuda" else device.type, "precision": "32-true",
        "max_steps": spec.steps, "max_epochs": 1, "enable_checkpointing": False, "enable_model_summary": False,
        "enable_progress_bar": False, "num_sanity_val_steps": 0, "limit_val_batches": 0})
    print(f"[gpt_char] training gpt_char on {corpus} ({spec.n_layer} layers, d_model {spec.d_model}, "
          f"{spec.steps} steps of {spec.batch_size}x{spec.block_size} characters) on {device}; cached afterwards at "
          f"{final_dir or out_dir}", flush=True)
    start = time.monotonic()
    module = NextChar()
    build_trainer(trainer_cfg, out_dir).fit(module, train_dataloaders=Windows())
    # measured on the device it trained on (Lightning hands the module back on the CPU)
    model = model.to(device).eval()
    tail = module.losses[-max(1, len(module.losses) // 10):]
    summary = {"chars": data.chars, "val_loss": val_loss(model, data.val.to(device), spec.block_size),
               "train_loss": sum(tail) / len(tail), "steps": len(module.losses),
               "train_seconds": round(time.monotonic() - start, 1)}
    print(f"[gpt_char] trained in {summary['train_seconds']:.0f} s: val loss {summary['val_loss']:.3f} nats/char "
          f"(uniform over the {data.vocab_size} characters: {math.log(data.vocab_size):.3f})", flush=True)
    save_gpt(model, out_dir, summary)
    return summary


def lr_factor(step: int, steps: int) -> float:
    """nanoGPT's schedule: linear warm-up over the first 5% of steps, then cosine decay to a tenth.
    Measured on the preset: 700 decayed steps reach the loss of 800 at a constant rate (1.77 nats)."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def val_loss(model: GPT, ids: torch.Tensor, block_size: int) -> float:
    """Mean next-character cross-entropy over the split cut into consecutive windows: every character
    is predicted once, and the number does not depend on a random draw."""
    n = (len(ids) - 1) // block_size
    x = ids[:n * block_size].view(n, block_size)
    y = ids[1:n * block_size + 1].view(n, block_size)
    total = sum(F.cross_entropy(model(xb).flatten(0, 1), yb.flatten(), reduction="sum").item()
                for xb, yb in zip(x.split(VAL_BATCH), y.split(VAL_BATCH)))
    return total / y.numel()
