"""Hugging Face models with the framework's hook names (a `HookedModel` adapter).

    adapter = HFHooked(AutoModelForCausalLM.from_pretrained(...))
    logits = adapter(input_ids=ids, attention_mask=mask).logits
    out, cache = adapter.run_with_cache(input_ids=ids, names=["blocks.3.attn.hook_pattern"])

Hook names (shapes as hook functions see them):
    hook_embed                          [batch, pos, d_model]   token embeddings
    blocks.{l}.hook_resid_pre|post      [batch, pos, d_model]   a block's input and output
    blocks.{l}.attn.hook_q|k|v          [batch, pos, head, d_head]   after projection (and q/k norm
                                        where the model has one), before RoPE; k and v have the
                                        model's key-value heads (grouped-query attention)
    blocks.{l}.attn.hook_rot_q|rot_k    [batch, pos, head, d_head]   what the attention scores use
                                        (after RoPE); models without RoPE have hook_q/k only
    blocks.{l}.attn.hook_pattern        [batch, head, query, key]    attention probabilities (read;
                                        switches that layer to the model's own eager kernel)

Attention goes through transformers' `AttentionInterface`: every supported attention module calls
the function registered there with per-head q/k/v after projection, norm and RoPE, and
`module.layer_idx`. Ours applies the hooks and delegates to the model's own eager function (when a
pattern is needed, or `attention="eager"`) or to SDPA, so a pass-through adapter reproduces the
model. The same name is registered in `AttentionMaskInterface` (eager masks: both kernels take them),
or causal and padding masks would silently vanish. Query head h reads key-value head
`h // (n_heads // n_kv_heads)`. Gemma-3 normalises q and k after their projections
(`q_norm`/`k_norm`), so a scale applied to `q_proj`'s output is undone: scale `hook_rot_q` instead.
"""

from __future__ import annotations

import sys
from functools import partial

import torch
from torch import nn

from labcore.hooks import HookedModel, HookPoint, LayoutConversion

def _swap_pos_head(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)


def _unflatten_d_head(d_head: int, t: torch.Tensor) -> torch.Tensor:
    return t.unflatten(-1, (-1, d_head))


def _flatten_heads(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(-2)


# [batch, head, pos, d] as attention kernels hold q/k/v <-> [batch, pos, head, d] as hooks see them
HEADS_FIRST = LayoutConversion(_swap_pos_head, _swap_pos_head, "[batch, head, pos, d_head] <-> [batch, pos, head, d_head]")


# attention classes that apply q_norm/k_norm after moving heads before positions
NORM_AFTER_TRANSPOSE = ("Gemma3",)


def _split_heads(d_head: int) -> LayoutConversion:
    # partials of module-level functions, not lambdas: the adapter stays picklable
    return LayoutConversion(partial(_unflatten_d_head, d_head), _flatten_heads,
                            "[batch, pos, head * d_head] <-> [batch, pos, head, d_head]")


class _Attention(nn.Module):
    def __init__(self, rotary: bool, d_head: int):
        super().__init__()
        self.rotary = rotary
        if rotary:  # before RoPE: on the projections' outputs; after RoPE: in the attention function
            self.hook_q, self.hook_k, self.hook_v = (HookPoint(_split_heads(d_head)) for _ in range(3))
            self.hook_rot_q, self.hook_rot_k = HookPoint(HEADS_FIRST), HookPoint(HEADS_FIRST)
        else:
            self.hook_q, self.hook_k, self.hook_v = (HookPoint(HEADS_FIRST) for _ in range(3))
        self.hook_pattern = HookPoint()


class _Block(nn.Module):
    def __init__(self, rotary: bool, d_head: int):
        super().__init__()
        self.hook_resid_pre, self.hook_resid_post = HookPoint(), HookPoint()
        self.attn = _Attention(rotary, d_head)


def _layers_and_attention(model: nn.Module) -> tuple[list[nn.Module], str]:
    """The decoder/encoder layers and the family: "rope" (Llama, Mistral, Qwen, Gemma-3), "gpt2", "bert"."""
    for path, family in (("model.layers", "rope"), ("layers", "rope"), ("model.language_model.layers", "rope"),
                         ("transformer.h", "gpt2"), ("h", "gpt2"), ("bert.encoder.layer", "bert"),
                         ("encoder.layer", "bert")):
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return list(node), family
    raise ValueError(f"{type(model).__name__}: no decoder/encoder layers found (supported: Llama, Mistral, "
                     "Qwen, Gemma-3, GPT-2, BERT families)")


class HFHooked(HookedModel):
    """A Hugging Face model exposing the framework's hook names; `attention` picks the kernel used
    when no pattern is requested ("sdpa" or "eager"). The wrapped model's attention implementation
    is set to this adapter's registered function (the adapter owns the model from then on)."""

    ATTN_NAME = "labcore_hooked"

    def __init__(self, model: nn.Module, attention: str = "sdpa"):
        super().__init__()
        if attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be 'sdpa' or 'eager', got {attention!r}")
        _register()
        self.model, self.attention = model, attention
        layers, self.family = _layers_and_attention(model)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.d_head = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        rotary = self.family == "rope"
        self.blocks = nn.ModuleList(_Block(rotary, self.d_head) for _ in layers)
        self.hook_embed = HookPoint()
        self._torch_hooks = [model.get_input_embeddings().register_forward_hook(
            lambda mod, args, out: self.hook_embed(out))]
        for block, layer in zip(self.blocks, layers):
            self._torch_hooks.append(layer.register_forward_pre_hook(_resid_pre(block), with_kwargs=True))
            self._torch_hooks.append(layer.register_forward_hook(_resid_post(block)))
            for module in layer.modules():
                if hasattr(module, "layer_idx") and _is_attention(module):
                    # a plain reference, not a submodule: the hook points keep their framework names
                    object.__setattr__(module, "_labcore_hooks", block.attn)
                    object.__setattr__(module, "_labcore_kernel", attention)
                    if rotary:
                        self._hook_projections(module, block.attn)
        model.set_attn_implementation(self.ATTN_NAME)
        self.setup_hooks()

    def _hook_projections(self, attention: nn.Module, points: _Attention) -> None:
        # after q_norm/k_norm where the model has them (Gemma-3, Qwen3): those run per head, on
        # [batch, pos, head, d] (Qwen3) or, after the transpose, on [batch, head, pos, d] (Gemma-3)
        heads_first = type(attention).__name__.startswith(NORM_AFTER_TRANSPOSE)
        for proj, norm, point in (("q_proj", "q_norm", points.hook_q), ("k_proj", "k_norm", points.hook_k),
                                  ("v_proj", None, points.hook_v)):
            module = getattr(attention, norm, None) if norm else None
            if module is not None:
                point.conversion = HEADS_FIRST if heads_first else None
                self._torch_hooks.append(module.register_forward_hook(lambda mod, args, out, p=point: p(out)))
            else:
                self._torch_hooks.append(getattr(attention, proj).register_forward_hook(
                    lambda mod, args, out, p=point: p(out)))

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def _is_attention(module: nn.Module) -> bool:
    return any(hasattr(module, name) for name in ("q_proj", "c_attn", "query"))


def _resid_pre(block: _Block):
    def hook(module, args, kwargs):
        if args:
            return (block.hook_resid_pre(args[0]), *args[1:]), kwargs
        kwargs["hidden_states"] = block.hook_resid_pre(kwargs["hidden_states"])
        return args, kwargs
    return hook


def _resid_post(block: _Block):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (block.hook_resid_post(output[0]), *output[1:])
        return block.hook_resid_post(output)
    return hook


def _hooked_attention(module, query, key, value, attention_mask, **kwargs):
    """The attention function registered in transformers' AttentionInterface."""
    points: _Attention | None = getattr(module, "_labcore_hooks", None)
    if points is not None:
        if points.rotary:
            query, key = points.hook_rot_q(query), points.hook_rot_k(key)
        else:
            query, key, value = points.hook_q(query), points.hook_k(key), points.hook_v(value)
    adapter_eager = points is not None and points.hook_pattern.has_hooks
    eager = sys.modules[type(module).__module__].eager_attention_forward
    if adapter_eager or getattr(module, "_labcore_kernel", "sdpa") == "eager":
        out, weights = eager(module, query, key, value, attention_mask, **kwargs)
    else:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if points is not None and weights is not None:
        points.hook_pattern(weights)
    return out, weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionInterface.register(HFHooked.ATTN_NAME, _hooked_attention)
    AttentionMaskInterface.register(HFHooked.ATTN_NAME, eager_mask)
