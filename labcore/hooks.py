"""Named hook points, TransformerLens-style, over plain `register_forward_hook`.

A model places `HookPoint()` modules (identity functions) where activations are worth reading or
editing; its module path is the hook's name (`blocks.0.hook_resid_post`). `HookedModel` gives any
such model `hook_names()`, `hooks(...)`, `run_with_hooks(...)` and `run_with_cache(...)`.
A hook function has TransformerLens' signature `fn(activation, hook) -> activation | None`.

A hook point may carry a `LayoutConversion`, so that an adapter over a foreign model can expose
the framework's layouts: a Hugging Face q projection outputs [batch, pos, head_index * d_head],
and `HookPoint(split_heads(n_heads))` shows hook functions [batch, pos, head_index, d_head]. Hook
functions read, and return edits, in the converted layout; the model continues with the inverse
conversion of what they return. With no hook attached nothing is converted.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator, Mapping, Union

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]
NameFilter = Union[str, Callable[[str], bool]]
FwdHooks = Union[Mapping[NameFilter, HookFn], Iterable[tuple[NameFilter, HookFn]]]


class StopForward(Exception):
    """Raised by a hook once everything a pass needs has been read: the rest of the forward pass
    would be wasted work. The caller catches it around the forward call."""


@dataclass(frozen=True)
class LayoutConversion:
    """The layout hook functions see (`to_hook`) and its inverse back to the model's (`from_hook`).

    In-place edits made by a hook function reach the model only when `to_hook` returns a view (as
    reshapes and transposes do); returning the edited tensor works with any conversion.
    """

    to_hook: Callable[[torch.Tensor], torch.Tensor]
    from_hook: Callable[[torch.Tensor], torch.Tensor]
    description: str = ""


def _unflatten_heads(n_heads: int, x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (n_heads, -1))


def _flatten_heads(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(-2)


def split_heads(n_heads: int) -> LayoutConversion:
    """[..., head_index * d_head] <-> [..., head_index, d_head], e.g. a fused q/k/v projection's output."""
    # partial of module-level functions rather than lambdas: a model holding it stays picklable
    return LayoutConversion(partial(_unflatten_heads, n_heads), _flatten_heads,
                            f"[..., {n_heads}*d_head] -> [..., {n_heads}, d_head]")


class HookPoint(nn.Module):
    """Identity module whose output hooks may read or replace, optionally in a converted layout."""

    name: str = ""

    def __init__(self, conversion: LayoutConversion | None = None):
        super().__init__()
        self.conversion = conversion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def has_hooks(self) -> bool:
        return bool(self._forward_hooks)

    def extra_repr(self) -> str:
        return self.conversion.description if self.conversion is not None else ""


class UnknownHookError(KeyError):
    def __init__(self, name: str, known: Iterable[str]):
        known = list(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known hooks: {', '.join(known[:12])}..."
        super().__init__(f"unknown hook name {name!r}{hint}")
        self.name, self.known = name, known

    def __reduce__(self):  # sweep launchers pickle a failed job's error back to the driver
        return type(self), (self.name, self.known)

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

    def select_hook_names(self, name_filter: NameFilter) -> list[str]:
        """A hook name (checked: unknown names raise UnknownHookError) or a predicate on names."""
        if callable(name_filter):
            return [n for n in self._hook_points if name_filter(n)]
        self.hook_point(name_filter)
        return [name_filter]

    @contextmanager
    def hooks(self, fwd_hooks: FwdHooks) -> Iterator[None]:
        """Attach hooks for the duration of the block; always removed, even on error.

        `fwd_hooks` maps hook names, or predicates on names (TransformerLens' `name_filter`), to
        hook functions: `{name: fn}` or `[(name_or_predicate, fn), ...]`.
        """
        items = fwd_hooks.items() if isinstance(fwd_hooks, Mapping) else fwd_hooks
        handles = []
        try:
            for name_filter, fn in items:
                for name in self.select_hook_names(name_filter):
                    handles.append(self._hook_points[name].register_forward_hook(_adapt(fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, *args, fwd_hooks: FwdHooks = (), **kwargs):
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names: Iterable[str] | Callable[[str], bool] | None = None,
                       detach: bool = True, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass returning (output, {hook name: activation}).

        `names` is a list of hook names, a predicate on names, or None for every hook. Activations
        are stored by reference (no copy), so caching costs almost nothing beyond the forward pass.
        They are in each hook point's converted layout, as hook functions see them.
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
        conversion = module.conversion
        if conversion is None:
            return fn(output, module)
        edited = fn(conversion.to_hook(output), module)
        return None if edited is None else conversion.from_hook(edited)
    return forward_hook
