"""Vision-language loading and the image dataset on a tiny random-init Gemma-3 built offline: a
SigLIP tower (32x32 images, 8x8 patches, pooled to 4 image tokens) under a 2-layer Gemma-3 decoder,
a byte-level BPE tokenizer trained here with Gemma-3's special tokens and its real chat template,
and Gemma-3's own image processor and processor, all saved to one directory like a hub checkpoint."""

import json
import shutil

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
PIL_Image = pytest.importorskip("PIL.Image")

from labcore.datasets.image_caption import ImageCaptions  # noqa: E402
from labcore.models.pretrained import AttentionLayout  # noqa: E402
from labcore.models.vision_language import HFVisionLanguageModel, VisionLanguageModel  # noqa: E402
from labcore.paths import CONFIG_DIR  # noqa: E402
from labcore.validate import ConfigError  # noqa: E402

IMAGE_SIZE, PATCH, IMAGE_TOKENS = 32, 8, 4     # 4x4 patches, average-pooled to 2x2 image tokens
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
            "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
# google/gemma-3-4b-it's chat template (as in transformers' Gemma-3 processor tests)
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""
PROMPTS = ["Describe the person in this image.", "What is shown here?"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(PROMPTS + ["a photo of a face", "user model turn"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    # Gemma's tokenizer starts every text with <bos>
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    # the named extra tokens give the tokenizer boi_token / eoi_token / image_token (and *_id), as
    # Gemma-3's tokenizer_config.json does; Gemma3Processor reads them
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_gemma3_vl")
    tok = tokenizer()
    text = transformers.Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=256, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)
    config = transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=IMAGE_TOKENS,
        boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id,
        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(config)
    # transformers initialises the image-to-text projection to zeros (every image would reach the
    # decoder as the same zero embedding); a trained checkpoint's is not, so draw it at random
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    model.save_pretrained(path)
    # the PIL image processor: the default one needs torchvision, which this project does not install
    images = transformers.Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    transformers.Gemma3Processor(image_processor=images, tokenizer=tok, chat_template=CHAT_TEMPLATE,
                                 image_seq_length=IMAGE_TOKENS).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(model_dir):
    return HFVisionLanguageModel(str(model_dir), device="cpu").load()


def images(n=2, seed=0, size=(40, 48)):
    rng = np.random.default_rng(seed)    # not square and not 32x32: the processor resizes
    return [PIL_Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def test_layout_reads_only_the_config(model_dir, tmp_path):
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")    # no weights, no processor
    assert HFVisionLanguageModel(str(tmp_path)).layout() == AttentionLayout(
        n_layers=2, n_heads=2, n_kv_heads=1, d_head=32, causal=True)
    with pytest.raises(ConfigError, match="not a Hugging Face model directory") as e:
        HFVisionLanguageModel(str(tmp_path / "nowhere")).layout()
    assert e.value.key == "model.path"
    with pytest.raises(ConfigError) as e:
        HFVisionLanguageModel(str(tmp_path), dtype="float8")
    assert e.value.key == "model.dtype"


def test_model_preset_builds_the_spec(model_dir):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    preset = OmegaConf.load(f"{CONFIG_DIR}/common/model/hf_gemma3_4b_it.yaml")
    assert preset.path == "google/gemma-3-4b-it" and preset.dtype == "bfloat16"
    spec = instantiate(OmegaConf.merge(preset, {"path": str(model_dir)}))
    assert isinstance(spec, HFVisionLanguageModel) and spec.layout().n_layers == 2


def test_image_batch_fires_every_decoder_layer_hook(lm):
    assert isinstance(lm, VisionLanguageModel) and lm.tokenizer is lm.processor.tokenizer
    batch = lm.encode_images(images(), PROMPTS)
    ids = batch["input_ids"]
    assert batch["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["attention_mask"].shape == ids.shape and "token_type_ids" in batch
    # each sample: one image's worth of placeholder tokens, between <start_of_image> and <end_of_image>
    assert (ids == lm.image_token_id).sum(1).tolist() == [IMAGE_TOKENS, IMAGE_TOKENS]
    tok = lm.tokenizer
    assert ((ids == tok.boi_token_id).sum(1) == 1).all() and ((ids == tok.eoi_token_id).sum(1) == 1).all()
    # one BOS (the template's, not a second from the tokenizer), then the user turn; the prompts differ
    # in length, so the shorter one is padded
    assert (ids[:, 0] == tok.bos_token_id).all() and ((ids == tok.bos_token_id).sum(1) == 1).all()
    assert batch["attention_mask"].sum(1).tolist()[0] != batch["attention_mask"].sum(1).tolist()[1]
    text = tok.decode(ids[1][batch["attention_mask"][1].bool()])
    assert text.endswith(f"{PROMPTS[1]}<end_of_turn>\n<start_of_turn>model\n")

    names = [f"blocks.{layer}.hook_resid_post" for layer in range(lm.layout.n_layers)]
    out, cache = lm.model.run_with_cache(**batch, names=names)
    assert out.logits.shape == (*ids.shape, len(tok))
    for name in names:
        assert cache[name].shape == (*ids.shape, 64)
    # the image reaches the decoder: another image changes the activations at its tokens
    _, other = lm.model.run_with_cache(**lm.encode_images(images(seed=1), PROMPTS), names=names)
    at_image = ids == lm.image_token_id
    assert not torch.allclose(cache[names[0]][at_image], other[names[0]][at_image])


def test_hooked_logits_equal_the_raw_model(lm, model_dir):
    raw = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = lm.encode_images(images(), PROMPTS)
    with torch.no_grad():
        expected = raw(**batch).logits
    assert torch.allclose(lm.forward(batch).logits, expected, atol=1e-5)
    # the render-then-process encoding is what the processor's one-call chat form gives
    conversations = [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": p}]}]
                     for image, p in zip(images(), PROMPTS)]
    one_call = lm.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                return_dict=True, return_tensors="pt", padding=True)
    assert set(one_call) == set(batch)
    for key in batch:
        assert torch.equal(one_call[key], batch[key]), key


def test_text_prompts_and_bfloat16(model_dir, lm):
    batch = lm.encode(["a photo of a face", "hi"], max_length=4)
    assert batch["input_ids"].shape == (2, 4) and batch["attention_mask"].sum(1).tolist() == [4, 3]
    assert lm.forward(batch).logits.shape == (2, 4, len(lm.tokenizer))
    half = HFVisionLanguageModel(str(model_dir), dtype="bfloat16", device="cpu").load()
    batch = half.encode_images(images(), PROMPTS)
    assert batch["pixel_values"].dtype == torch.bfloat16    # the vision tower takes the model's dtype
    assert half.forward(batch).logits.dtype == torch.bfloat16


def test_max_length_cuts_the_prompt_but_never_the_image(lm):
    full = lm.encode_images(images(), PROMPTS)["input_ids"].shape[1]
    assert lm.encode_images(images(), PROMPTS, max_length=full - 3)["input_ids"].shape[1] == full - 3
    with pytest.raises(ValueError, match="image"):
        lm.encode_images(images(), PROMPTS, max_length=5)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        lm.encode_images(images(), PROMPTS[:1])


def write_samples(root, rows, name="samples.csv", image_names=("a.png", "b.png", "c.png", "d.png")):
    (root / "img").mkdir(exist_ok=True)
    for image, file in zip(images(len(image_names), size=(IMAGE_SIZE, IMAGE_SIZE)), image_names):
        image.save(root / "img" / file)
    path = root / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        header = list(rows[0])
        path.write_text("\n".join([",".join(header)] + [",".join(str(row[k]) for k in header) for row in rows]) + "\n")
    return path


ROWS = [{"image": "img/a.png", "label": "male", "prompt": "Describe this person."},
        {"image": "img/b.png", "label": "female", "prompt": ""},
        {"image": "img/c.png", "label": "male", "prompt": "Who is this?"},
        {"image": "img/d.png", "label": "female", "prompt": ""}]


@pytest.mark.parametrize("name", ["samples.csv", "samples.jsonl"])
def test_image_captions_read_a_table_and_encode_through_the_model(lm, tmp_path, name):
    data = ImageCaptions(write_samples(tmp_path, ROWS, name), prompt="Describe the image.")
    assert len(data) == 4 and data.label_names == ["female", "male"]
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [1, 0, 1, 0]
    assert data.ids.dtype == np.int64 and data.ids.tolist() == [0, 1, 2, 3]
    assert data.describe(1) == "b.png: Describe the image."    # an empty cell takes the default prompt
    assert data.describe(2) == "c.png: Who is this?"
    batch = data.batch(lm, [0, 3], max_length=None)
    assert (batch["input_ids"] == lm.image_token_id).sum(1).tolist() == [IMAGE_TOKENS, IMAGE_TOKENS]
    assert not torch.equal(batch["pixel_values"][0], batch["pixel_values"][1])    # two different files
    assert torch.equal(batch["input_ids"], lm.encode_images(images(2), ["Describe this person.",
                                                                         "Describe the image."])["input_ids"])
    assert lm.forward(batch).logits.shape[:2] == batch["input_ids"].shape


def test_image_captions_image_dir_and_preset(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    write_samples(tmp_path, ROWS)
    table = tmp_path / "image_caption" / "samples.csv"
    table.parent.mkdir()
    table.write_text("image,label\n" + "".join(f"{r['image'][4:]},{r['label']}\n" for r in ROWS))
    preset = OmegaConf.load(f"{CONFIG_DIR}/common/dataset/image_caption.yaml")
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "dataset": preset})
    cfg.dataset.image_dir = str(tmp_path / "img")
    data = instantiate(cfg.dataset)
    assert isinstance(data, ImageCaptions) and data.path == table
    assert data.images[0] == tmp_path / "img" / "a.png" and data.describe(0) == "a.png: Describe this image."


def test_image_captions_errors_name_the_key(tmp_path):
    def error(path, **kwargs):
        with pytest.raises(ConfigError) as e:
            ImageCaptions(path, **kwargs)
        return e.value

    e = error(tmp_path / "missing.csv")
    assert e.key == "dataset.path" and "missing.csv" in e.message
    (tmp_path / "samples.txt").write_text("image,label\n")
    assert "unknown table type '.txt'" in error(tmp_path / "samples.txt").message
    table = write_samples(tmp_path, ROWS)
    e = error(table, label_field="group")
    assert e.key == "dataset.label_field" and "no column 'group'" in e.message
    assert error(table, image_field="file").key == "dataset.image_field"
    table = write_samples(tmp_path, [{**ROWS[0], "image": "img/gone.png"}, *ROWS[1:]], name="gone.csv")
    e = error(table)
    assert e.key == "dataset.path" and "gone.png" in e.message and "row 1" in e.message
    e = error(write_samples(tmp_path, ROWS[:2], name="no_dir.csv"), image_dir=tmp_path / "elsewhere")
    assert e.key == "dataset.image_dir" and "elsewhere/img/a.png" in e.message
    e = error(write_samples(tmp_path, [r for r in ROWS if r["label"] == "male"], name="one.csv"))
    assert e.key == "dataset.label_field" and "['male']" in e.message
    e = error(write_samples(tmp_path, [{**ROWS[0], "label": ""}, *ROWS[1:]], name="blank.csv"))
    assert e.key == "dataset.label_field" and "row 1" in e.message
    (tmp_path / "bad.jsonl").write_text('{"image": "img/a.png", "label": "x"}\nnot json\n')
    assert "line 2" in error(tmp_path / "bad.jsonl").message
    # another config location: the errors name its keys
    assert error(tmp_path / "missing.csv", key="probe.data.path").key == "probe.data.path"
    assert error(table, key="probe.data.path", label_field="group").key == "probe.data.label_field"


def test_multi_layer_extraction_of_image_prompts_stores_every_token_image_tokens_included(lm, tmp_path):
    from labcore.layer_extraction import extract_layers, load_layer, load_rows
    data = ImageCaptions(write_samples(tmp_path, ROWS), prompt="Describe the image.")
    meta = extract_layers(lm, data, [0, 1], tmp_path / "x", batch_size=3, max_length=None, progress=False)
    rows = load_rows(tmp_path / "x")
    per_sample = np.bincount(rows["sample"], minlength=4)
    masks = [int(data.batch(lm, [i], None)["attention_mask"].sum()) for i in range(4)]
    assert per_sample.tolist() == masks and meta["rows"] == sum(masks)
    assert ((rows["token"] == lm.image_token_id).reshape(-1).sum()) == 4 * IMAGE_TOKENS
    assert load_layer(tmp_path / "x", 1).shape == (sum(masks), 64)
    assert meta["non_finite"]["1"]["values"] == 0
