"""The Hugging Face adapter on tiny random-init models built offline: a pass-through adapter
reproduces the model bit for bit (with left padding), patterns equal the model's own
`output_attentions`, and Q/K interventions act on exactly the heads they should."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from labcore.models.hf import HFHooked  # noqa: E402

V = 50


def llama(n_kv=2):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv, max_position_embeddings=64))


def gemma3():
    return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], bos_token_id=1,
        eos_token_id=2, pad_token_id=0))


MODELS = {
    "llama-gqa": lambda: llama(2),
    "llama-mqa": lambda: llama(1),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64)),
    "gemma3": gemma3,
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)),
    "bert": lambda: transformers.BertModel(transformers.BertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64)),
}


def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


def output(o):
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def pair(make):
    torch.manual_seed(0)
    ref = make().eval()
    ref.set_attn_implementation("eager")
    return ref, HFHooked(copy.deepcopy(ref), attention="eager").eval()


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_pass_through_is_bit_identical_and_patterns_match(name):
    ref, adapter = pair(MODELS[name])
    o = ref(**inputs(), output_attentions=True)
    out, cache = adapter.run_with_cache(**inputs(), names=lambda n: n.endswith("hook_pattern"))
    assert torch.equal(output(o), output(out))
    for layer, pattern in enumerate(o.attentions):
        assert torch.equal(pattern, cache[f"blocks.{layer}.attn.hook_pattern"])
    assert {"hook_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.attn.hook_q"} <= \
        set(adapter.hook_names())


@torch.no_grad()
def test_sdpa_kernel_matches_eager():
    ref, _ = pair(MODELS["llama-gqa"])
    fast = HFHooked(copy.deepcopy(ref), attention="sdpa").eval()
    assert torch.allclose(output(ref(**inputs())), output(fast(**inputs())), atol=1e-5)


def patterns(adapter, hooks=()):
    with torch.no_grad():
        _, cache = adapter.run_with_cache(**inputs(), names=lambda n: n.endswith("hook_pattern"))
        with adapter.hooks(hooks):
            _, edited = adapter.run_with_cache(**inputs(), names=lambda n: n.endswith("hook_pattern"))
    return cache, edited


def scale_head(head, alpha):
    def fn(act, hook):  # [batch, pos, head, d_head]
        act = act.clone()
        act[:, :, head] *= alpha
        return act
    return fn


def changed_heads(a, b):
    return [h for h in range(a.shape[1]) if not torch.allclose(a[:, h], b[:, h], atol=1e-7)]


@pytest.mark.parametrize("name, hook", [("llama-gqa", "hook_rot_q"), ("qwen3", "hook_rot_q"), ("gemma3", "hook_rot_q"),
                                        ("gemma3", "hook_q"), ("gpt2", "hook_q"), ("bert", "hook_q")])
def test_scaling_one_query_head_changes_only_that_head(name, hook):
    _, adapter = pair(MODELS[name])
    clean, scaled = patterns(adapter, [(f"blocks.0.attn.{hook}", scale_head(1, 1.5))])
    assert changed_heads(clean["blocks.0.attn.hook_pattern"], scaled["blocks.0.attn.hook_pattern"]) == [1]
    assert not torch.equal(clean["blocks.1.attn.hook_pattern"], scaled["blocks.1.attn.hook_pattern"])  # later layers see it


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_q_and_k_scaling_of_a_head_with_its_own_kv_coincide(alpha):
    _, adapter = pair(lambda: llama(4))  # n_kv_heads == n_heads
    _, by_q = patterns(adapter, [("blocks.0.attn.hook_rot_q", scale_head(2, alpha))])
    _, by_k = patterns(adapter, [("blocks.0.attn.hook_rot_k", scale_head(2, alpha))])
    for layer in (0, 1):
        key = f"blocks.{layer}.attn.hook_pattern"
        assert torch.allclose(by_q[key], by_k[key], atol=1e-6)


def test_a_shared_kv_head_moves_exactly_its_group():
    _, adapter = pair(lambda: llama(2))  # query heads 0, 1 read KV head 0; heads 2, 3 read KV head 1
    clean, scaled = patterns(adapter, [("blocks.0.attn.hook_rot_k", scale_head(0, 1.5))])
    assert changed_heads(clean["blocks.0.attn.hook_pattern"], scaled["blocks.0.attn.hook_pattern"]) == [0, 1]


def test_unsupported_model_is_refused():
    with pytest.raises(ValueError, match="no decoder/encoder layers found"):
        HFHooked(torch.nn.Linear(2, 2))
