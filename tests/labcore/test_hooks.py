import pytest
import torch

from labcore.hooks import HookedModel, HookPoint, LayoutConversion, UnknownHookError, split_heads
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


# ---- hook points with a layout conversion (adapters over foreign models) ----------------------
class FlatQModel(HookedModel):
    """Stands in for a foreign model: its q projection outputs [batch, pos, head_index * d_head]."""

    def __init__(self, conversion, n_heads=3, d_head=4, d_model=6):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.q_proj = torch.nn.Linear(d_model, n_heads * d_head)
        self.out = torch.nn.Linear(n_heads * d_head, 5)
        self.hook_q = HookPoint(conversion)
        self.setup_hooks()

    def forward(self, x):
        return self.out(torch.tanh(self.hook_q(self.q_proj(x))))


def heads_first(n_heads):
    """[b, s, h*d] -> [b, h, s, d]: a conversion whose inverse is not a plain reshape."""
    return LayoutConversion(lambda x: x.unflatten(-1, (n_heads, -1)).transpose(1, 2),
                            lambda x: x.transpose(1, 2).flatten(-2))


@pytest.fixture
def flat_x():
    return torch.randn(2, 7, 6, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("conversion, head_axis", [(split_heads(3), 2), (heads_first(3), 1)])
def test_edits_in_the_converted_layout_reach_the_model(conversion, head_axis, flat_x):
    torch.manual_seed(0)
    model = FlatQModel(conversion)
    seen = []

    def scale_head_1(act, hook):
        seen.append(act.shape)
        return act * torch.tensor([1.0, 3.0, 1.0]).view([3 if i == head_axis else 1 for i in range(4)])

    edited = model.run_with_hooks(flat_x, fwd_hooks={"hook_q": scale_head_1})
    assert seen == [(2, 7, 3, 4) if head_axis == 2 else (2, 3, 7, 4)]
    with torch.no_grad():  # the same edit made on the model's own flat layout: head 1 is columns 4:8
        model.q_proj.weight[4:8] *= 3
        model.q_proj.bias[4:8] *= 3
    torch.testing.assert_close(edited, model(flat_x))


@pytest.mark.parametrize("conversion", [split_heads(3), heads_first(3)])
def test_no_op_hooks_on_a_converted_point_leave_outputs_bit_identical(conversion, flat_x):
    model = FlatQModel(conversion)
    clean = model(flat_x)
    assert torch.equal(model.run_with_hooks(flat_x, fwd_hooks={"hook_q": lambda a, h: a}), clean)
    assert torch.equal(model.run_with_hooks(flat_x, fwd_hooks={"hook_q": lambda a, h: None}), clean)
    _, cache = model.run_with_cache(flat_x, names=["hook_q"])
    assert torch.equal(conversion.from_hook(cache["hook_q"]), model.q_proj(flat_x))


def test_in_place_edit_through_a_view_conversion_reaches_the_model(flat_x):
    model = FlatQModel(split_heads(3))

    def zero_head_0(act, hook):
        act[:, :, 0] = 0
    zeroed = model.run_with_hooks(flat_x, fwd_hooks={"hook_q": zero_head_0})
    with torch.no_grad():
        model.q_proj.weight[0:4] = 0
        model.q_proj.bias[0:4] = 0
    torch.testing.assert_close(zeroed, model(flat_x))


def test_converted_hook_point_is_an_identity_without_hooks(flat_x):
    point = HookPoint(split_heads(3))
    x = torch.randn(2, 7, 12)
    assert point(x) is x  # no conversion, no copy


# ---- selecting hooks by a predicate on names --------------------------------------------------
def test_run_with_hooks_accepts_a_name_predicate(model, tokens):
    seen = []
    logits = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_resid_post"),
                                                      lambda a, h: seen.append(h.name))])
    assert seen == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]  # in execution order
    torch.testing.assert_close(logits, model(tokens))


def test_predicate_hooks_edit_and_mix_with_names(model, tokens):
    seen = []
    zeroed = model.run_with_hooks(tokens, fwd_hooks=[
        ("hook_embed", lambda a, h: seen.append(h.name)),
        (lambda n: n.startswith("blocks.1.") and n.endswith("resid_post"), lambda a, h: torch.zeros_like(a))])
    assert seen == ["hook_embed"]
    torch.testing.assert_close(zeroed, torch.zeros_like(zeroed))
    with pytest.raises(UnknownHookError):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.9.hook_resid_post", lambda a, h: None)])


def test_select_hook_names(model):
    assert model.select_hook_names(lambda n: n.endswith("attn.hook_z")) == ["blocks.0.attn.hook_z",
                                                                             "blocks.1.attn.hook_z"]
    assert model.select_hook_names("hook_embed") == ["hook_embed"]
