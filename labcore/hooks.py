"""Named hook points, TransformerLens-style, over plain `register_forward_hook`.

A model places `HookPoint()` modules (identity functions) where activations are worth reading or
editing; its module path is the hook's name (`blocks.0.hook_resid_post`). `HookedModel` gives any
such model `hook_names()`, `hooks(...)`, `run_with_hooks(...)` and `run_with_cache(...)`.
A hook function has TransformerLens' signature `fn(activation, hook) -> activation | None`.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """Identity module whose output hooks may read or replace."""

    name: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def has_hooks(self) -> bool:
        return bool(self._forward_hooks)


class UnknownHookError(KeyError):
    def __init__(self, name: str, known: Iterable[str]):
        known = list(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known hooks: {', '.join(known[:12])}..."
        super().__init__(f"unknown hook name {name!r}{hint}")
        self.name = name

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


class HookedModel(nn.Module):
    """Mixin for models built from HookPoints. Call `self.setup_hooks()` at the end of __init__."""

    def setup_hooks(self) -> None:
        self._hook_points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self._hook_points[name] = module

    def hook_names(self) -> list[str]:
        return list(self._hook_points)

    def hook_point(self, name: str) -> HookPoint:
        try:
            return self._hook_points[name]
        except KeyError:
            raise UnknownHookError(name, self._hook_points) from None

    def check_hook_names(self, names: Iterable[str]) -> None:
        for name in names:
            self.hook_point(name)

    @contextmanager
    def hooks(self, fwd_hooks: Mapping[str, HookFn] | Iterable[tuple[str, HookFn]]) -> Iterator[None]:
        """Attach hooks for the duration of the block; always removed, even on error."""
        items = fwd_hooks.items() if isinstance(fwd_hooks, Mapping) else fwd_hooks
        handles = []
        try:
            for name, fn in items:
                point = self.hook_point(name)
                handles.append(point.register_forward_hook(_adapt(fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, *args, fwd_hooks: Mapping[str, HookFn] | Iterable[tuple[str, HookFn]] = (), **kwargs):
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names: Iterable[str] | Callable[[str], bool] | None = None,
                       detach: bool = True, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass returning (output, {hook name: activation}).

        `names` is a list of hook names, a predicate on names, or None for every hook. Activations
        are stored by reference (no copy), so caching costs almost nothing beyond the forward pass.
        """
        if names is None:
            selected = self.hook_names()
        elif callable(names):
            selected = [n for n in self.hook_names() if names(n)]
        else:
            selected = list(names)
        cache: dict[str, torch.Tensor] = {}

        def make(name: str) -> HookFn:
            def store(act: torch.Tensor, hook: HookPoint) -> None:
                cache[name] = act.detach() if detach else act
            return store

        out = self.run_with_hooks(*args, fwd_hooks=[(n, make(n)) for n in selected], **kwargs)
        return out, cache


def _adapt(fn: HookFn):
    def forward_hook(module: HookPoint, inputs, output):
        return fn(output, module)
    return forward_hook
