"""Vision-language models (Gemma-3 4B-it and the like) with the framework's hook names.

The spec is as cheap as `HFModel` (its path resolution, offline check and layout, read from the text
config); `load()` returns a `VisionLanguageModel`: a `LanguageModel` whose hooks sit on the text
decoder (`blocks.{l}.hook_resid_post` is decoder layer l's output, image tokens included) and which
also encodes (image, prompt) pairs the way the model was trained to read them: one user turn of the
model's own chat template, [image, prompt], then the header of the model's answer.

    spec = HFVisionLanguageModel("google/gemma-3-4b-it", dtype="bfloat16")
    lm = spec.load()
    batch = lm.encode_images([image_a, image_b], ["Describe this person.", ...], max_length=None)
    out, cache = lm.model.run_with_cache(**batch, names=["blocks.20.hook_resid_post"])
"""

from __future__ import annotations

import torch

from labcore.models.pretrained import DTYPES, HFModel, LanguageModel, resolve_device
from labcore.validate import ConfigError


class VisionLanguageModel(LanguageModel):
    """A loaded, hooked vision-language model: `encode` takes text-only prompts (as `LanguageModel`),
    `encode_images` (image, prompt) pairs; `forward` passes every key of either batch to the model."""

    def __init__(self, model, layout, processor, name: str, image_token_id: int | None):
        tokenizer = processor.tokenizer
        if tokenizer.pad_token is None:   # padding is masked out anyway
            tokenizer.pad_token = tokenizer.eos_token

        def encode(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
            out = tokenizer(list(texts), truncation=True, max_length=max_length, padding="longest",
                            return_tensors="pt")
            return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

        super().__init__(model, layout, encode, name=name, tokenizer=tokenizer)
        self.processor = processor
        self.image_token_id = image_token_id   # the placeholder token the image embeddings replace

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def chat_prompts(self, prompts: list[str]) -> list[str]:
        """Each prompt as the text of one user turn [image, prompt] plus the answer header."""
        conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}]
                         for p in prompts]
        return [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                for c in conversations]

    def encode_images(self, images: list, prompts: list[str], max_length: int | None = None
                      ) -> dict[str, torch.Tensor]:
        """The batch of (image, prompt) pairs: input_ids, attention_mask, pixel_values (in the model's
        dtype) and whatever else the processor gives (Gemma-3: token_type_ids, which mark the image
        tokens that attend to each other both ways). Padded to the longest sample; with max_length,
        each sample is cut to at most that many tokens from the right (the processor refuses a cut
        that drops image tokens)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        texts = self.chat_prompts(prompts)
        # Rendering, then calling the processor, is what `processor.apply_chat_template(tokenize=True)`
        # does inside, but this pair of calls means the same thing in every transformers version
        # (the keyword arguments of the one-call form moved in 5.x). The template writes the BOS
        # token itself, so the tokenizer must not add a second one.
        bos = self.tokenizer.bos_token
        template_adds_bos = bool(bos) and texts[0].startswith(bos)
        cut = {"truncation": True, "max_length": max_length} if max_length is not None else {}
        out = self.processor(text=texts, images=[[image] for image in images], padding=True,  # one image a sample
                             return_tensors="pt", add_special_tokens=not template_adds_bos, **cut)
        batch = dict(out)
        batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        return batch


class HFVisionLanguageModel(HFModel):
    """A Hugging Face vision-language model (image-text-to-text) by local directory or hub id: the
    model, its processor (image processor + tokenizer + chat template) and the text decoder's
    layout. The same keys and errors as `HFModel`."""

    def __init__(self, path: str, dtype: str = "float32", attention: str = "sdpa", device: str = "auto",
                 auto_class: str = "AutoModelForImageTextToText", key: str = "model.path"):
        super().__init__(path, dtype=dtype, attention=attention, device=device, auto_class=auto_class, key=key)

    def load(self) -> VisionLanguageModel:
        import transformers

        from labcore.models.hf import HFHooked
        path = self.resolved_path()
        model = getattr(transformers, self.auto_class).from_pretrained(path, dtype=DTYPES[self.dtype])
        processor = transformers.AutoProcessor.from_pretrained(path)
        if not hasattr(processor, "image_processor"):
            raise ConfigError(self.key, f"{self.path!r} has no image processor: not a vision-language model "
                              "(use labcore.models.pretrained.HFModel for a text model)")
        config = model.config
        # Gemma-3 names it image_token_id in transformers 5, image_token_index before
        image_token_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
        hooked = HFHooked(model, attention=self.attention).to(resolve_device(self.device))
        return VisionLanguageModel(hooked, self.layout(), processor, name=self.path, image_token_id=image_token_id)
