"""Perturbation regimes: windows of training steps during which one channel of the run is disturbed.

    channel  effect during [start, end)
    input    each input token becomes `token` with probability `prob`            (sensory fog)
    target   each target is replaced by a random token with probability `prob`   (bewilderment)
    stats    statistic `stat` fed to the self-state update gets `offset` added   (false feedback)
    self     the self-state is clamped to [-clamp, clamp]                        (self clamp)
    optim    the learning rate is multiplied by `lr_mult`                        (heat wave)

A config (`regime=` group) lists named windows. Steps are given on a schedule of `reference_iters`
steps (the original's 2000) and scaled to the run's `max_iters`, so the same regimes apply to a smoke
run of 100 steps; `reference_iters: null` takes them as literal steps. Every window is checked before
training starts and a bad one names its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from labcore.validate import ConfigError

CHANNELS = ("input", "target", "stats", "self", "optim")
PARAMS = {"input": {"prob", "token"}, "target": {"prob"}, "stats": {"stat", "offset"}, "self": {"clamp"},
          "optim": {"lr_mult"}}
STATS = ("loss", "grad_norm", "step_frac", "entropy", "top1_conf")


@dataclass(frozen=True)
class Regime:
    name: str
    channel: str
    start: int
    end: int
    params: dict = field(default_factory=dict, hash=False, compare=False)

    def active(self, step: int) -> bool:
        return self.start <= step < self.end


def parse(node, max_iters: int, key: str = "regime") -> list[Regime]:
    """Regimes of a `regime` config node ({reference_iters, allow_overlap, windows: {name: {...}}})."""
    if node is None:
        return []
    reference = node.get("reference_iters")
    if reference is not None and (not isinstance(reference, int) or reference <= 0):
        raise ConfigError(f"{key}.reference_iters", f"must be a positive number of steps or null, got {reference!r}")
    regimes = []
    for name, w in (node.get("windows") or {}).items():
        k = f"{key}.windows.{name}"
        channel = w.get("channel")
        if channel not in CHANNELS:
            raise ConfigError(f"{k}.channel", f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
        start, end = w.get("start"), w.get("end")
        for part, v in (("start", start), ("end", end)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{k}.{part}", f"must be a step number >= 0, got {v!r}")
        if end <= start:
            raise ConfigError(f"{k}.end", f"must be after start ({start}), got {end}")
        limit = reference or max_iters
        if end > limit:
            raise ConfigError(f"{k}.end", f"step {end} is beyond the run's {limit} steps"
                              + (" (reference_iters)" if reference else " (train.max_iters)"))
        params = {p: w[p] for p in w if p not in ("channel", "start", "end")}
        unknown = set(params) - PARAMS[channel]
        if unknown:
            raise ConfigError(f"{k}.{sorted(unknown)[0]}", f"not a parameter of the {channel} channel "
                              f"(its parameters: {', '.join(sorted(PARAMS[channel]))})")
        _check_params(k, channel, params)
        if reference:
            start, end = round(start * max_iters / reference), max(round(end * max_iters / reference),
                                                                    round(start * max_iters / reference) + 1)
        regimes.append(Regime(str(name), channel, start, end, params))
    if not node.get("allow_overlap", False):
        ordered = sorted(regimes, key=lambda r: r.start)
        for a, b in zip(ordered, ordered[1:]):
            if b.start < a.end:
                raise ConfigError(f"{key}.windows.{b.name}", f"overlaps {a.name} (steps {a.start}-{a.end} and "
                                  f"{b.start}-{b.end} after scaling); set {key}.allow_overlap=true to allow it")
    return regimes


def _check_params(key: str, channel: str, p: dict) -> None:
    def number(name, ok, what):
        v = p.get(name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not ok(v):
            raise ConfigError(f"{key}.{name}", f"must be {what}, got {v!r}")
    if channel in ("input", "target"):
        number("prob", lambda v: 0 <= v <= 1, "a probability in [0, 1]")
    if channel == "input":
        p.setdefault("token", 0)
        number("token", lambda v: v >= 0 and v == int(v), "a token id >= 0")
    if channel == "stats":
        if p.get("stat", "loss") not in STATS:
            raise ConfigError(f"{key}.stat", f"unknown statistic {p.get('stat')!r}; known: {', '.join(STATS)}")
        p.setdefault("stat", "loss")
        number("offset", lambda v: True, "a number")
    if channel == "self":
        number("clamp", lambda v: v >= 0, "a bound >= 0")
    if channel == "optim":
        number("lr_mult", lambda v: v > 0, "a positive factor")


class Schedule:
    """The regimes of a run and what each does to a step's inputs, targets, statistics, state, lr."""

    def __init__(self, regimes: list[Regime], vocab_size: int, seed: int):
        self.regimes, self.vocab_size, self.seed = regimes, vocab_size, seed

    def active(self, step: int) -> list[Regime]:
        return [r for r in self.regimes if r.active(step)]

    def _generator(self, step: int, salt: int) -> torch.Generator:
        # a function of (seed, step): a resumed run disturbs exactly the tokens an uninterrupted one did
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 8 + salt)

    def inputs(self, x: torch.Tensor, step: int) -> torch.Tensor:
        for r in self.active(step):
            if r.channel == "input":
                hit = torch.rand(x.shape, generator=self._generator(step, 1)).to(x.device) < r.params["prob"]
                x = torch.where(hit, torch.full_like(x, int(r.params["token"])), x)
        return x

    def targets(self, y: torch.Tensor, step: int) -> torch.Tensor:
        for r in self.active(step):
            if r.channel == "target":
                g = self._generator(step, 2)
                hit = torch.rand(y.shape, generator=g).to(y.device) < r.params["prob"]
                y = torch.where(hit, torch.randint(self.vocab_size, y.shape, generator=g).to(y.device), y)
        return y

    def stats(self, stats: torch.Tensor, step: int) -> torch.Tensor:
        for r in self.active(step):
            if r.channel == "stats":
                stats = stats.clone()
                stats[STATS.index(r.params["stat"])] += r.params["offset"]
        return stats

    def state(self, s: torch.Tensor, step: int) -> torch.Tensor:
        for r in self.active(step):
            if r.channel == "self":
                s = s.clamp(-r.params["clamp"], r.params["clamp"])
        return s

    def lr_mult(self, step: int) -> float:
        mult = 1.0
        for r in self.active(step):
            if r.channel == "optim":
                mult *= r.params["lr_mult"]
        return mult
