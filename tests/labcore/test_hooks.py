import pytest
import torch

from labcore.hooks import UnknownHookError
from labcore.models.gpt import GPT, GPTConfig


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, d_model=16, d_mlp=32)).eval()


@pytest.fixture
def tokens():
    return torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(1))


def test_hook_names_follow_transformerlens(model):
    names = set(model.hook_names())
    for expected in ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid",
                     "blocks.1.hook_resid_post", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k",
                     "blocks.0.attn.hook_v", "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern",
                     "blocks.0.attn.hook_z", "blocks.1.mlp.hook_post"]:
        assert expected in names


def test_run_with_cache_matches_manual_forward(model, tokens):
    logits, cache = model.run_with_cache(tokens, names=["blocks.1.hook_resid_post", "blocks.0.attn.hook_q"])
    assert set(cache) == {"blocks.1.hook_resid_post", "blocks.0.attn.hook_q"}
    assert cache["blocks.0.attn.hook_q"].shape == (3, 8, 2, 8)
    torch.testing.assert_close(model.unembed(model.ln_f(cache["blocks.1.hook_resid_post"])), logits)
    torch.testing.assert_close(model(tokens), logits)  # caching changed nothing


def test_run_with_cache_predicate(model, tokens):
    _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    assert set(cache) == {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"}
    pattern = cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(3, 2, 8))
    assert torch.all(pattern.triu(1) == 0)  # causal


def test_explicit_attention_path_equals_sdpa(model, tokens):
    fast = model(tokens)
    slow = model.run_with_hooks(tokens, fwd_hooks={"blocks.0.attn.hook_pattern": lambda p, h: None,
                                                   "blocks.1.attn.hook_attn_scores": lambda s, h: None})
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_q_and_k_scaling_of_a_head_give_the_same_output(model, tokens):
    def scale(head, alpha):
        def fn(act, hook):
            act = act.clone()
            act[:, :, head] *= alpha
            return act
        return fn
    via_q = model.run_with_hooks(tokens, fwd_hooks={"blocks.0.attn.hook_q": scale(1, 8.0)})
    via_k = model.run_with_hooks(tokens, fwd_hooks={"blocks.0.attn.hook_k": scale(1, 8.0)})
    torch.testing.assert_close(via_q, via_k, atol=1e-5, rtol=1e-5)
    assert (via_q - model(tokens)).abs().max() > 1e-4  # the intervention does something


def test_hooks_edit_activations_and_are_removed(model, tokens):
    clean = model(tokens)
    zeroed = model.run_with_hooks(tokens, fwd_hooks={"blocks.1.hook_resid_post": lambda a, h: torch.zeros_like(a)})
    # zero residual -> LayerNorm output is its bias (zero) -> all-zero logits
    torch.testing.assert_close(zeroed, torch.zeros_like(zeroed))
    with pytest.raises(RuntimeError):
        with model.hooks({"blocks.0.hook_resid_pre": lambda a, h: (_ for _ in ()).throw(RuntimeError("boom"))}):
            model(tokens)
    torch.testing.assert_close(model(tokens), clean)  # no hook left behind


def test_unknown_hook_name_suggests_close_names(model, tokens):
    with pytest.raises(UnknownHookError, match="blocks.1.hook_resid_post"):
        model.run_with_cache(tokens, names=["blocks.1.hook_resid_pots"])
