"""Config validation that names the offending key, before any heavy compute."""

from __future__ import annotations

import os
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """Bad input: the message starts with the dotted config key (or file) at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message

    def __reduce__(self):
        # sweep launchers (submitit, SLURM) pickle a job's exception back to the driver; the
        # default reduce would call ConfigError(<formatted text>) and fail with a TypeError
        return type(self), (self.key, self.message)


def get(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as e:  # missing mandatory value, bad interpolation
        raise ConfigError(key, str(e).splitlines()[0]) from None
    return value


def require(cfg: DictConfig, key: str, check: Callable[[Any], bool], message: str) -> Any:
    value = get(cfg, key)
    try:
        ok = check(value)
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(key, f"{message} (got {value!r})")
    return value


def positive_int(cfg: DictConfig, key: str) -> int:
    return require(cfg, key, lambda v: _is_int(v) and v > 0, "must be a positive integer")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def seed_value(cfg: DictConfig, key: str) -> int:
    """A seed numpy and torch accept: an integer in [0, 2**32)."""
    return require(cfg, key, lambda v: _is_int(v) and 0 <= v < 2**32, "must be an integer in [0, 2**32)")


def optional(check: Callable[[DictConfig, str], Any], cfg: DictConfig, key: str) -> Any:
    """`check(cfg, key)` unless the value is null."""
    return None if get(cfg, key) is None else check(cfg, key)


def number_in(cfg: DictConfig, key: str, low: float, high: float, *, closed_high: bool = True) -> float:
    return require(cfg, key, lambda v: _is_number(v) and low <= v and (v <= high if closed_high else v < high),
                   f"must be a number in [{low}, {high}{']' if closed_high else ')'}")


def adam_betas(cfg: DictConfig, key: str) -> tuple[float, float]:
    return require(cfg, key, lambda v: len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
                   "must be two numbers in [0, 1), e.g. [0.9, 0.999]")


def checkpoint_file(cfg: DictConfig, key: str) -> str | None:
    """A path that exists and holds a Lightning checkpoint (a torch file with a state_dict)."""
    path = existing_path(cfg, key)
    if path is None:
        return None
    import torch
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:
        raise ConfigError(key, f"not a checkpoint file: {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(key, f"not a Lightning checkpoint (no state_dict): {path}")
    return path


def positive_number(cfg: DictConfig, key: str) -> float:
    return require(cfg, key, lambda v: _is_number(v) and v > 0, "must be a positive number")


def fraction(cfg: DictConfig, key: str, closed_low: bool = False) -> float:
    return require(cfg, key, lambda v: isinstance(v, (int, float)) and (0 <= v if closed_low else 0 < v) and v < 1,
                   "must be a fraction in " + ("[0, 1)" if closed_low else "(0, 1)"))


def existing_path(cfg: DictConfig, key: str) -> str | None:
    value = get(cfg, key)
    if value is not None and not os.path.exists(str(value)):
        raise ConfigError(key, f"path does not exist: {value}")
    return value


def instantiate_or_explain(cfg: DictConfig, key: str, **kwargs) -> Any:
    """`hydra.utils.instantiate(cfg.<key>, **kwargs)`; a bad value becomes a ConfigError naming the key
    (Hydra wraps the constructor's own message in a long instantiation error)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    node = get(cfg, key)
    if node is None or "_target_" not in node:
        raise ConfigError(key, "needs a config group option with a `_target_`")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, ConfigError):   # the constructor already named its key
            raise cause from None
        raise ConfigError(key, str(cause).splitlines()[-1] if str(cause) else type(cause).__name__) from None


def parse_layers(spec: Any, n_layers: int, key: str) -> list[int]:
    """The layers a spec names, in order: "all", an int, a list of ints, or ranges "0-10,20-33"
    (both ends included). A layer outside [0, n_layers), a reversed range, a repeated layer or
    anything else is a ConfigError naming `key`."""
    def bad(message: str) -> ConfigError:
        return ConfigError(key, f"{message} (got {spec!r}; the model has {n_layers} layers, 0-{n_layers - 1})")

    if spec == "all":
        return list(range(n_layers))
    if _is_int(spec):
        parts: list = [spec]
    elif isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
    elif OmegaConf.is_list(spec) or isinstance(spec, (list, tuple)):
        parts = list(spec)
    else:
        raise bad("must be 'all', a layer, a list of layers or ranges like '0-10,20-33'")
    layers: list[int] = []
    for part in parts:
        if _is_int(part):
            lo = hi = part
        elif isinstance(part, str) and part.isdigit():
            lo = hi = int(part)
        elif isinstance(part, str) and part.count("-") == 1 and all(x.strip().isdigit() for x in part.split("-")):
            lo, hi = (int(x) for x in part.split("-"))
            if lo > hi:
                raise bad(f"range {part!r} runs backwards")
        else:
            raise bad(f"{part!r} is not a layer or a range 'a-b'")
        for layer in range(lo, hi + 1):
            if not 0 <= layer < n_layers:
                raise bad(f"layer {layer} does not exist")
            if layer in layers:
                raise bad(f"layer {layer} is named twice")
            layers.append(layer)
    if not layers:
        raise bad("names no layer")
    return layers
