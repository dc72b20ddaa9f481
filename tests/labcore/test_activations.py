import copy

import numpy as np
import pytest
import torch

from labcore.activations import (NonFiniteActivationsError, extract, extract_to_dir, load_activations,
                                 raise_if_non_finite, read_metadata)
from labcore.hooks import UnknownHookError
from labcore.models.gpt import GPT, GPTConfig

HOOKS = ["hook_embed", "blocks.0.attn.hook_q", "blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"]
BATCH = 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=3, n_head=2, d_model=16, d_mlp=32)).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 20, (11, 8), generator=torch.Generator().manual_seed(1))  # 11: a ragged last batch


def in_ram(model, tokens, names, batch_size=BATCH):
    """The reference: run_with_cache per batch, concatenated."""
    chunks = {name: [] for name in names}
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            _, cache = model.run_with_cache(tokens[start:start + batch_size], names=names)
            for name in names:
                chunks[name].append(cache[name])
    return {name: torch.cat(c) for name, c in chunks.items()}


def pick(act, position):
    if position is None:
        return act
    if isinstance(position, int):
        return act[:, position]
    return act[torch.arange(len(act)), torch.as_tensor(position)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("position", [None, 3, -1, "per_row"])
def test_streamed_arrays_equal_run_with_cache(model, tokens, tmp_path, dtype, position):
    if position == "per_row":
        position = np.arange(len(tokens)) % 8
    meta = extract_to_dir(model, tokens, HOOKS, tmp_path, position=position, dtype=dtype, batch_size=BATCH,
                          progress=False)
    reference = in_ram(model, tokens, HOOKS)
    assert meta == read_metadata(tmp_path)
    assert set(meta["hooks"]) == set(HOOKS) and meta["dtype"] == dtype
    for name in HOOKS:
        expected = pick(reference[name], position).to(getattr(torch, dtype))
        as_tensor = load_activations(tmp_path, name, as_tensor=True)
        assert as_tensor.dtype == expected.dtype and list(as_tensor.shape) == meta["hooks"][name]["shape"]
        assert torch.equal(as_tensor, expected), name
        as_numpy = load_activations(tmp_path, name)
        assert np.array_equal(as_numpy, expected.float().numpy() if dtype == "bfloat16" else expected.numpy())
    assert meta["hooks"]["blocks.0.attn.hook_q"]["shape"][-2:] == [2, 8]
    if dtype == "bfloat16":
        raw = np.load(tmp_path / meta["hooks"]["hook_embed"]["file"])
        assert raw.dtype == np.uint16  # numpy has no bfloat16: the bits are stored


def test_predicate_selects_hooks(model, tokens, tmp_path):
    meta = extract_to_dir(model, tokens, lambda n: n.endswith("hook_resid_post"), tmp_path, progress=False)
    assert list(meta["hooks"]) == [f"blocks.{i}.hook_resid_post" for i in range(3)]


def test_padding_mask_ids_and_per_row_positions_are_written(model, tokens, tmp_path):
    lengths = np.array([8, 3, 5, 1, 8, 2, 7, 6, 4, 8, 1])
    mask = np.arange(8)[None, :] < lengths[:, None]
    ids = np.arange(100, 111)
    meta = extract_to_dir(model, tokens, ["blocks.0.hook_resid_post"], tmp_path, position=lengths - 1,
                          padding_mask=torch.as_tensor(mask), ids=ids.astype(np.int32), progress=False)
    saved_mask, saved_ids = np.load(tmp_path / meta["padding_mask"]), np.load(tmp_path / meta["ids"])
    assert saved_mask.dtype == np.bool_ and np.array_equal(saved_mask, mask)
    assert saved_ids.dtype == np.int64 and np.array_equal(saved_ids, ids)
    assert meta["position"] == "per_row" and np.array_equal(np.load(tmp_path / meta["positions"]), lengths - 1)
    with pytest.raises(ValueError, match="padding"):
        extract_to_dir(model, tokens, ["blocks.0.hook_resid_post"], tmp_path, position=lengths % 8,
                       padding_mask=mask, progress=False)  # one past the last real token
    with pytest.raises(ValueError, match="padding"):
        extract_to_dir(model, tokens, ["blocks.0.hook_resid_post"], tmp_path, position=4, padding_mask=mask,
                       progress=False)


def test_early_exit_gives_the_same_arrays_and_skips_later_blocks(model, tokens, tmp_path):
    calls = {"blocks.1": 0, "blocks.2": 0, "unembed": 0}
    handles = [getattr(model, "unembed").register_forward_pre_hook(lambda m, a: calls.__setitem__("unembed", calls["unembed"] + 1))]
    for i in (1, 2):
        handles.append(model.blocks[i].register_forward_pre_hook(
            lambda m, a, key=f"blocks.{i}": calls.__setitem__(key, calls[key] + 1)))
    names = ["blocks.0.hook_resid_post", "hook_embed", "blocks.0.attn.hook_z"]
    try:
        early = extract_to_dir(model, tokens, names, tmp_path / "early", batch_size=BATCH, progress=False)
        assert calls == {"blocks.1": 0, "blocks.2": 0, "unembed": 0}  # the probe stops early too
        full = extract_to_dir(model, tokens, names, tmp_path / "full", batch_size=BATCH, early_exit=False,
                              progress=False)
        assert calls == {"blocks.1": 3, "blocks.2": 3, "unembed": 3}  # 11 rows in batches of 4
    finally:
        for h in handles:
            h.remove()
    assert early["forward_stopped_after"] == "blocks.0.hook_resid_post" and full["forward_stopped_after"] is None
    for name in names:
        assert torch.equal(load_activations(tmp_path / "early", name, as_tensor=True),
                           load_activations(tmp_path / "full", name, as_tensor=True))


def test_non_finite_values_are_counted_and_refused(model, tokens, tmp_path):
    poisoned = copy.deepcopy(model)
    with torch.no_grad():  # token 7 embeds to NaN; token 9 beyond float16's range; token 11 to finite
        poisoned.tok_emb.weight[7] = float("nan")  # float32 values whose sum overflows
        poisoned.tok_emb.weight[9, 3] = 1e6
        poisoned.tok_emb.weight[11, :4] = 3e38
    nan_at, big_at, huge_at = (tokens == 7).numpy(), (tokens == 9).numpy(), (tokens == 11).numpy()
    assert nan_at.any() and big_at.any() and huge_at.any() and not (nan_at | big_at | huge_at).any(1).all()

    with pytest.warns(UserWarning, match="non-finite"):
        meta16 = extract_to_dir(poisoned, tokens, ["hook_embed"], tmp_path / "f16", dtype="float16",
                                batch_size=BATCH, progress=False)
        meta32 = extract_to_dir(poisoned, tokens, ["hook_embed"], tmp_path / "f32", batch_size=BATCH,
                                progress=False)
    clean = extract_to_dir(model, tokens, ["hook_embed"], tmp_path / "clean", batch_size=BATCH, progress=False)
    f16, f32 = meta16["hooks"]["hook_embed"], meta32["hooks"]["hook_embed"]
    assert f32["non_finite_values"] == 16 * nan_at.sum() and f32["non_finite_rows"] == nan_at.any(1).sum()
    assert f16["non_finite_values"] == 16 * nan_at.sum() + big_at.sum() + 4 * huge_at.sum()  # float16 overflow
    assert f16["non_finite_rows"] == (nan_at | big_at | huge_at).any(1).sum()
    assert read_metadata(tmp_path / "f16")["hooks"] == meta16["hooks"]
    with pytest.raises(NonFiniteActivationsError, match=f"{f16['non_finite_values']} non-finite values"):
        raise_if_non_finite(meta16)
    raise_if_non_finite(clean)  # nothing to refuse


def test_extract_keeps_its_results(model, tokens):
    reference = in_ram(model, tokens, ["blocks.2.hook_resid_post"], batch_size=5)["blocks.2.hook_resid_post"]
    one = extract(model, tokens, "blocks.2.hook_resid_post", position=-1, batch_size=5)
    every = extract(model, tokens, "blocks.2.hook_resid_post", batch_size=5)
    assert one.dtype == np.float32 and np.array_equal(one, reference[:, -1].numpy())
    assert np.array_equal(every, reference.numpy())


def test_bad_requests_fail_with_clear_errors(model, tokens, tmp_path):
    with pytest.raises(UnknownHookError, match="did you mean"):
        extract_to_dir(model, tokens, ["blocks.0.hook_resid_pots"], tmp_path, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        extract_to_dir(model, tokens, ["hook_embed"], tmp_path, dtype="int8", progress=False)
    with pytest.raises(ValueError, match="position=None"):
        extract_to_dir(model, tokens, ["blocks.0.attn.hook_pattern"], tmp_path, position=2, progress=False)
    with pytest.raises(ValueError, match="batch dimension"):
        extract_to_dir(model, tokens, ["hook_pos_embed"], tmp_path, progress=False)
