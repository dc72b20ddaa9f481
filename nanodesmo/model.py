"""The self-state GPT: labcore's GPT whose input embedding carries W_proj s, where s is a state vector
updated once per training step from the model's own training statistics.

    stats_t   = [loss, grad_norm (before clipping), step / max_iters, entropy, top-1 probability]
                of step t-1 (entropy and top-1 of the last position's softmax, batch mean)
    h         = tanh(W_trunk [stats_t, memory features])
    raw       = W_head h
    gate      = sigmoid(w_gate h)  (0 without memory)
    new       = (1 - gate) raw + gate mem          (mem: memory's pull, at most as long as raw)
    s_t       = (1 - rate) s_{t-1} + rate new      (s_{t-1} detached: the loss trains W_trunk,
                                                    W_head, w_gate and W_proj through one step)
    x         = tok_emb + pos_emb + W_proj s_t     (no bias)

The state, its EMA (for drift), the memory and the last statistics are buffers: they are saved in and
restored from checkpoints with the weights, so a resumed run continues the same trajectory. Controls
are configuration, not forks: `dim: 0` is the vanilla GPT, `mode: fixed` a random state of a chosen
norm that never updates (fixed bias), `dim: 1` the one-dimensional state.

Memory (`memory: ema | buffer`): an EMA m <- d m + (1 - d) s, or a ring buffer of the last `buffer_len`
states written every `buffer_every` steps and read with attention weights softmax(buf . s / sqrt(dim)).
delta = context - s; mem = `mem_gain` delta, clipped to ||mem|| <= ||raw||; the update MLP also sees
[||delta||, cos(s, s + delta), W_delta delta (8 features)].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labcore.models.gpt import GPT, GPTConfig

N_STATS = 5
STAT_NAMES = ("loss", "grad_norm", "step_frac", "entropy", "top1_conf")
MEMORY_FEATURES = 8


@dataclass
class SelfStateConfig:
    dim: int = 32                 # 0: no self-state (vanilla)
    mode: str = "learned"         # learned | fixed (a random state, never updated: the fixed-bias control)
    fixed_norm: float = 1.0       # mode=fixed: the state's norm
    hidden: int = 64
    rate: float = 0.2             # s <- (1 - rate) s + rate new
    drift_ema: float = 0.99       # ema <- drift_ema ema + (1 - drift_ema) s; drift = 1 - cos(s, ema)
    memory: str = "none"          # none | ema | buffer
    memory_decay: float = 0.9
    buffer_len: int = 64
    buffer_every: int = 10
    mem_gain: float = 10.0

    def __post_init__(self):
        if self.dim < 0:
            raise ValueError(f"self_state.dim must be >= 0, got {self.dim}")
        if self.mode not in ("learned", "fixed"):
            raise ValueError(f"self_state.mode must be 'learned' or 'fixed', got {self.mode!r}")
        if self.memory not in ("none", "ema", "buffer"):
            raise ValueError(f"self_state.memory must be none, ema or buffer, got {self.memory!r}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"self_state.rate must be in (0, 1], got {self.rate}")


class SelfState(nn.Module):
    """The state, its update MLP, its memory and its projection into the embedding."""

    def __init__(self, cfg: SelfStateConfig, d_model: int, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.proj = nn.Linear(d, d_model, bias=False)
        nn.init.normal_(self.proj.weight, std=0.02)
        with_memory = cfg.memory != "none"
        n_in = N_STATS + (2 + MEMORY_FEATURES if with_memory else 0)
        self.trunk, self.head = nn.Linear(n_in, cfg.hidden), nn.Linear(cfg.hidden, d)
        self.gate = nn.Linear(cfg.hidden, 1) if with_memory else None
        self.delta_features = nn.Linear(d, MEMORY_FEATURES, bias=False) if with_memory else None
        self.register_buffer("state", torch.zeros(d))
        self.register_buffer("ema", torch.zeros(d))
        self.register_buffer("last_stats", torch.zeros(N_STATS))
        self.register_buffer("memory", torch.zeros(cfg.buffer_len if cfg.memory == "buffer" else 1, d))
        self.register_buffer("memory_count", torch.zeros((), dtype=torch.long))
        if cfg.mode == "fixed":
            g = torch.Generator().manual_seed(seed)
            s = torch.randn(d, generator=g)
            self.state.copy_(s / s.norm() * cfg.fixed_norm)
            self.ema.copy_(self.state)

    @property
    def learned(self) -> bool:
        return self.cfg.mode == "learned"

    def memory_context(self, s: torch.Tensor) -> torch.Tensor | None:
        if self.cfg.memory == "ema":
            return self.memory[0]
        if self.cfg.memory == "buffer":
            n = int(min(self.memory_count.item(), self.cfg.buffer_len))
            if n == 0:
                return s
            buf = self.memory[:n]
            weights = torch.softmax(buf @ s / math.sqrt(self.cfg.dim), dim=0)
            return weights @ buf
        return None

    def propose(self, stats: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The next state from `stats` (differentiable in the update MLP, not in the old state)."""
        s = self.state.detach()
        if not self.learned:
            return s, {}
        context = self.memory_context(s)
        features = [stats]
        if context is not None:
            delta = context - s
            features += [delta.norm()[None], F.cosine_similarity(s, s + delta, dim=0, eps=1e-8)[None],
                         self.delta_features(delta)]
        h = torch.tanh(self.trunk(torch.cat(features)))
        raw = self.head(h)
        info = {"mlp_norm": raw.detach().norm()}
        new = raw
        if context is not None:
            mem = self.cfg.mem_gain * (context - s)
            info["mem_norm"] = mem.norm()
            limit = raw.detach().norm()
            mem = mem * torch.clamp(limit / mem.norm().clamp(min=1e-12), max=1.0)
            gate = torch.sigmoid(self.gate(h)).squeeze(0)
            new = (1 - gate) * raw + gate * mem
            info.update(mem_clamped_norm=mem.norm(), gate=gate.detach(),
                        cos=F.cosine_similarity(raw.detach(), mem, dim=0, eps=1e-8))
        return (1 - self.cfg.rate) * s + self.cfg.rate * new, info

    @torch.no_grad()
    def commit(self, s: torch.Tensor, step: int) -> None:
        """Keep `s` as the state (and feed the EMA and the memory) after the step that used it."""
        s = s.detach()
        self.state.copy_(s)
        self.ema.mul_(self.cfg.drift_ema).add_((1 - self.cfg.drift_ema) * s)
        if self.cfg.memory == "ema":
            self.memory[0].mul_(self.cfg.memory_decay).add_((1 - self.cfg.memory_decay) * s)
        elif self.cfg.memory == "buffer" and step % self.cfg.buffer_every == 0:
            self.memory[int(self.memory_count) % self.cfg.buffer_len] = s
            self.memory_count += 1


class SelfStateGPT(nn.Module):
    """`GPT` + `SelfState` (None when `self_state.dim` is 0: the vanilla model)."""

    def __init__(self, gpt: GPTConfig, self_state: SelfStateConfig, seed: int = 0):
        super().__init__()
        self.gpt = GPT(gpt)
        self.self_state = SelfState(self_state, gpt.d_model, seed) if self_state.dim > 0 else None
        self._injection: torch.Tensor | None = None
        # the injection is added to the token embeddings, where the GPT's hook_embed sits
        self.gpt.hook_embed.register_forward_hook(self._inject)

    def _inject(self, module, args, output):
        return output if self._injection is None else output + self._injection

    def forward(self, idx: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, pos, vocab]; `state` (default: the current state) is injected when the
        model has a self-state."""
        if self.self_state is not None:
            s = self.self_state.state if state is None else state
            self._injection = self.self_state.proj(s)
        try:
            return self.gpt(idx)
        finally:
            self._injection = None
