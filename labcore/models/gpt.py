"""A nanoGPT-style decoder-only transformer with TransformerLens-style hook points.

One readable file: config dataclass, attention, MLP, block, model. Attention uses PyTorch's fused
scaled-dot-product kernel unless a hook on `attn_scores` or `pattern` is attached, in which case the
explicit path materialises the scores so the hook can read or edit them. Hooks on q/k/v work on
both paths because they sit before the attention product.

Hook names: hook_embed, hook_pos_embed, blocks.{l}.hook_resid_pre|mid|post, blocks.{l}.hook_attn_out,
blocks.{l}.hook_mlp_out, blocks.{l}.attn.hook_q|k|v|attn_scores|pattern|z, blocks.{l}.mlp.hook_pre|post.
Each hook's shape is written beside its declaration, TransformerLens-style. Every hook except
hook_pos_embed has a leading batch dimension; all but attn_scores/pattern have pos second.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labcore.hooks import HookedModel, HookPoint


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    d_mlp: int = 512
    act: str = "relu"  # relu | gelu
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        if self.act not in ("relu", "gelu"):
            raise ValueError(f"model.act must be 'relu' or 'gelu', got {self.act!r}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        # hook_q, hook_k, hook_v: [batch, pos, head_index, d_head]
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        # hook_attn_scores: [batch, head_index, query_pos, key_pos], scaled by 1/sqrt(d_head), future keys -inf
        # hook_pattern: [batch, head_index, query_pos, key_pos], softmax of the scores (rows sum to 1)
        # hook_z: [batch, pos, head_index, d_head], the pattern-weighted values before the output projection
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool))
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.d_head).unbind(dim=2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, dh]
        drop = self.dropout if self.training else 0.0
        if self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
            scores = scores.masked_fill(~self.causal_mask[:T, :T], float("-inf"))
            pattern = self.hook_pattern(torch.softmax(self.hook_attn_scores(scores), dim=-1))
            z = F.dropout(pattern, drop, self.training) @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        z = self.hook_z(z.transpose(1, 2))  # [B, T, H, dh]
        return self.out(z.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)
        self.act = nn.ReLU() if cfg.act == "relu" else nn.GELU()
        # hook_pre: [batch, pos, d_mlp] before the nonlinearity; hook_post: [batch, pos, d_mlp] after it
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.hook_post(self.act(self.hook_pre(self.fc_in(x)))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias), nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn, self.mlp = Attention(cfg), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        # hook_resid_pre, hook_resid_mid, hook_resid_post: [batch, pos, d_model], the residual stream
        # before the block, after attention, after the MLP
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        # hook_attn_out, hook_mlp_out: [batch, pos, d_model], what attention / the MLP add to the residual stream
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.drop(self.attn(self.ln1(x)))))
        return self.hook_resid_post(x + self.hook_mlp_out(self.drop(self.mlp(self.ln2(x)))))


class GPT(HookedModel):
    """`GPT(GPTConfig(...))`, or `GPT(**fields)` so a config group's `_target_` builds it directly."""

    def __init__(self, cfg: GPTConfig | None = None, **fields):
        super().__init__()
        if (cfg is None) == (not fields):
            raise TypeError("GPT takes a GPTConfig or its fields as keywords, not both")
        cfg = cfg or GPTConfig(**fields)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        # hook_embed: [batch, pos, d_model]; hook_pos_embed: [pos, d_model], shared by the batch (broadcast)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("attn.out.weight", "fc_out.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        self.setup_hooks()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [batch, pos] token ids -> logits [batch, pos, vocab]."""
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size={self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.hook_embed(self.tok_emb(idx)) + self.hook_pos_embed(self.pos_emb(pos)))
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_f(x))


def save_gpt(model: GPT, directory: str | Path, info: dict | None = None) -> Path:
    """Write `model.safetensors` + `config.json` (the GPTConfig and `info`, e.g. how it was trained).
    Atomic per file: a killed save leaves no half-written file that loads."""
    from safetensors.torch import save_file

    from labcore.artifacts import atomic_path, atomic_write_json
    directory = Path(directory)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    atomic_write_json(directory / "config.json", {"model": model.cfg.to_dict(), "info": info or {}})
    return directory


def load_gpt(directory: str | Path) -> tuple[GPT, dict]:
    """(model in eval mode, info) from a directory written by `save_gpt`."""
    import json

    from safetensors.torch import load_file
    directory = Path(directory)
    for name in ("model.safetensors", "config.json"):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory} is not a saved GPT: it has no {name}")
    meta = json.loads((directory / "config.json").read_text())
    model = GPT(GPTConfig(**meta["model"]))
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.eval(), meta.get("info", meta.get("train", {}))

