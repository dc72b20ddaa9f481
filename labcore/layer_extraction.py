"""Many layers of a model over a labelled dataset, into per-layer memory-mapped arrays, checkpointed
every few samples and resumable after a kill.

    meta = extract_layers(lm, data, layers=[0, 1, 2], directory="extraction", batch_size=16)
    acts = load_layer("extraction", 2)          # [rows, d_model], memory-mapped
    rows = load_rows("extraction")              # {"sample", "position", "token"} per row

A row is one stored token: every real (non-padding) token of every sample (`tokens="all"`), or each
sample's last real token (`tokens="last"`). The directory holds

    tokens.npy        [rows, 3] int64: sample id, position among the sample's real tokens, token id
    layer_<l>.npy     [rows, d_model] per layer, in the storage dtype (float32, float16, bfloat16 bits)
    labels.npy        [samples] int64 group index;  split.npy [samples] the sample's split
    progress.json     while running: samples and rows done, non-finite counts so far (atomic)
    extraction.json   written last: what was extracted, with every layer's NaN/Inf counts

A batch's rows are flushed to disk before progress.json moves past them, so after a kill the arrays
hold at least what progress.json says; a re-run continues from there with the same batches, and
writes what an uninterrupted run would have. A directory holding another extraction (other model,
data, layers or settings) is refused, naming it, rather than mixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from labcore.activations import STORAGE_DTYPES, NpyRowWriter
from labcore.artifacts import atomic_write_json, sha256_json
from labcore.hooks import StopForward

METADATA_FILE = "extraction.json"
PROGRESS_FILE = "progress.json"
TOKEN_MODES = ("all", "last")


class LabelledSamples(Protocol):
    labels: np.ndarray          # [n] group index
    label_names: list[str]

    def __len__(self) -> int: ...
    def describe(self, i: int) -> str: ...
    def batch(self, lm, indices: list[int], max_length: int | None) -> dict: ...


class ExtractionMismatch(ValueError):
    pass


def resid_hook(layer: int) -> str:
    """The hook holding a layer's output (the residual stream after the block)."""
    return f"blocks.{layer}.hook_resid_post"


def last_real_token(mask: torch.Tensor) -> torch.Tensor:
    """[batch] index of each row's last real token, whichever side the padding is on."""
    mask = mask.bool()
    return mask.sum(1) - 1 + mask.float().argmax(1).long()


def fingerprint(data: LabelledSamples) -> str:
    """What identifies a dataset's content: every sample's description and label."""
    return sha256_json([[data.describe(i), int(data.labels[i])] for i in range(len(data))])


def extract_layers(lm, data: LabelledSamples, layers: list[int], directory: str | Path, *, batch_size: int = 16,
                   max_length: int | None = 128, dtype: str = "float32", tokens: str = "all",
                   checkpoint_every: int = 100, progress: bool = True, key_extra: dict | None = None) -> dict:
    """Extract `layers` (see the module doc); returns extraction.json's content. A finished extraction
    with the same settings is returned as is; an interrupted one continues."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {list(STORAGE_DTYPES)}, got {dtype!r}")
    if tokens not in TOKEN_MODES:
        raise ValueError(f"tokens must be one of {TOKEN_MODES}, got {tokens!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layers = list(layers)
    key = {"model": lm.name, "data": fingerprint(data), "layers": layers, "dtype": dtype, "tokens": tokens,
           "max_length": max_length, "batch_size": batch_size, **(key_extra or {})}
    done = _read_json(directory / METADATA_FILE)
    if done is not None:
        if done["key"] != key:
            raise ExtractionMismatch(f"{directory} holds another extraction ({_diff(done['key'], key)}): "
                                     "use another directory, or delete it to start over")
        return done

    n = len(data)
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    row_table, starts, encoded = _layout(lm, data, batches, max_length, tokens)
    torch_dtype, np_dtype = STORAGE_DTYPES[dtype]
    d_model = _width(lm, data, batches[0], max_length, layers[-1])
    shape = (len(row_table), d_model)

    state = _read_json(directory / PROGRESS_FILE)
    resume = state is not None and state["key"] == key and all((directory / f"layer_{l}.npy").exists() for l in layers)
    if not resume:
        state = {"key": key, "samples_done": 0, "rows_done": 0, "non_finite": {str(l): [0, 0] for l in layers}}
        np.save(directory / "tokens.npy", row_table, allow_pickle=False)
        np.save(directory / "labels.npy", np.asarray(data.labels, dtype=np.int64), allow_pickle=False)
        split = getattr(data, "split", None)
        np.save(directory / "split.npy", np.asarray(split if split is not None else ["train"] * n, dtype=str))
    outputs = {l: NpyRowWriter(directory / f"layer_{l}.npy", shape, np_dtype, reopen=resume) for l in layers}
    counts = {int(l): v for l, v in state["non_finite"].items()}
    try:
        _run(lm, data, batches, starts, encoded, layers, outputs, counts, state, directory, max_length, tokens,
             torch_dtype, checkpoint_every, progress)
    finally:
        for out in outputs.values():
            out.close()

    meta = {"key": key, "model": lm.name, "layers": layers, "hooks": {str(l): resid_hook(l) for l in layers},
            "rows": len(row_table), "samples": n, "d_model": d_model, "dtype": dtype,
            "stored_as": np.dtype(np_dtype).name, "tokens": tokens, "label_names": list(data.label_names),
            "non_finite": {str(l): {"values": counts[l][0], "rows": counts[l][1]} for l in layers},
            "resumed_from_sample": state.get("resumed_from", 0)}
    atomic_write_json(directory / METADATA_FILE, meta)
    (directory / PROGRESS_FILE).unlink(missing_ok=True)
    return meta


def load_layer(directory: str | Path, layer: int, as_tensor: bool = False):
    """A layer's rows, memory-mapped (copy-on-write); bfloat16 comes back as float32 numpy or a
    bfloat16 tensor, as `labcore.activations.load_activations` does."""
    meta = read_extraction(directory)
    if str(layer) not in meta["hooks"]:
        raise KeyError(f"{directory} has no layer {layer} (it has {meta['layers']})")
    raw = np.load(Path(directory) / f"layer_{layer}.npy", mmap_mode="c")
    if meta["dtype"] == "bfloat16":
        if as_tensor:
            return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return torch.from_numpy(raw) if as_tensor else raw


def load_rows(directory: str | Path) -> dict[str, np.ndarray]:
    table = np.load(Path(directory) / "tokens.npy")
    return {"sample": table[:, 0], "position": table[:, 1], "token": table[:, 2]}


def read_extraction(directory: str | Path) -> dict:
    """extraction.json of a finished extraction; FileNotFoundError (saying so) for an unfinished one."""
    meta = _read_json(Path(directory) / METADATA_FILE)
    if meta is None:
        state = "interrupted: re-run to resume it" if (Path(directory) / PROGRESS_FILE).exists() else "missing"
        raise FileNotFoundError(f"{directory}: no finished extraction ({METADATA_FILE} {state})")
    return meta


# ---- the passes ---------------------------------------------------------------------------------
# Encoded batches up to this many bytes in all are kept from the layout pass for the forward passes
# (token ids: a few MiB for thousands of samples); larger ones (images) are encoded again.
KEEP_ENCODED_BYTES = 256 * 2 ** 20


def _layout(lm, data, batches, max_length, tokens) -> tuple[np.ndarray, list[int], list[dict] | None]:
    """Which rows each sample gives (tokenising only): the row table, each batch's first row, and
    the encoded batches while they fit in KEEP_ENCODED_BYTES (else None)."""
    table, starts, total = [], [], 0
    encoded, kept_bytes = [], 0
    for batch in batches:
        starts.append(total)
        enc = data.batch(lm, batch, max_length)
        if encoded is not None:
            kept_bytes += sum(v.numel() * v.element_size() for v in enc.values() if isinstance(v, torch.Tensor))
            if kept_bytes <= KEEP_ENCODED_BYTES:
                encoded.append(enc)
            else:
                encoded = None
        mask = enc["attention_mask"].bool()
        for j, i in enumerate(batch):
            ids = enc["input_ids"][j][mask[j]]
            positions = np.arange(len(ids))
            if tokens == "last":
                ids, positions = ids[-1:], positions[-1:]
            table.append(np.stack([np.full(len(ids), i), positions, ids.numpy()], axis=1))
            total += len(ids)
    return np.concatenate(table).astype(np.int64), starts, encoded


@torch.no_grad()
def _width(lm, data, batch, max_length, layer) -> int:
    seen = {}

    def record(act, hook):
        seen["d"] = act.shape[-1]
        raise StopForward

    with lm.model.hooks([(resid_hook(layer), record)]):
        try:
            lm.forward(data.batch(lm, batch[:1], max_length))
        except StopForward:
            pass
    if "d" not in seen:
        raise ValueError(f"{resid_hook(layer)} did not fire in a forward pass of {lm.name}")
    return int(seen["d"])


@torch.no_grad()
def _run(lm, data, batches, starts, encoded, layers, outputs, counts, state, directory, max_length, tokens, torch_dtype,
         checkpoint_every, progress) -> None:
    from labcore.output import progress_bar
    deepest = resid_hook(max(layers))
    current: dict = {}

    def writer(layer: int):
        def write(act: torch.Tensor, hook) -> None:
            mask = current["mask"]
            if tokens == "last":
                rows = act[torch.arange(act.shape[0], device=act.device), last_real_token(mask)]
            else:
                rows = act[mask]
            rows = rows.to(torch_dtype)
            if not torch.isfinite(rows.sum(dtype=torch.float32)):   # exact count only when something is off
                bad = ~torch.isfinite(rows)
                counts[layer][0] += int(bad.sum())
                counts[layer][1] += int(bad.any(1).sum())
            rows = rows.cpu()
            outputs[layer].write(current["start"], (rows.view(torch.int16) if torch_dtype == torch.bfloat16 else rows).numpy())
            if resid_hook(layer) == deepest:
                raise StopForward
        return write

    first = next((b for b, batch in enumerate(batches) if batch[0] >= state["samples_done"]), len(batches))
    if state["samples_done"]:
        state["resumed_from"] = state["samples_done"]
    since_checkpoint = 0
    with lm.model.hooks([(resid_hook(l), writer(l)) for l in layers]), \
            progress_bar(len(data), f"extract {len(layers)} layers", unit="samples", enabled=progress) as bar:
        bar.update(state["samples_done"])
        for b in range(first, len(batches)):
            enc = encoded[b] if encoded is not None else data.batch(lm, batches[b], max_length)
            current.update(start=starts[b], mask=enc["attention_mask"].bool().to(lm.device))
            try:
                lm.forward(enc)
            except StopForward:
                pass
            since_checkpoint += len(batches[b])
            state["samples_done"] = batches[b][-1] + 1
            state["rows_done"] = starts[b + 1] if b + 1 < len(starts) else None
            bar.update(len(batches[b]))
            if since_checkpoint >= checkpoint_every and b + 1 < len(batches):
                for out in outputs.values():
                    out.flush()                                         # the data, then the claim
                state["non_finite"] = {str(l): counts[l] for l in layers}
                atomic_write_json(directory / PROGRESS_FILE, state)
                since_checkpoint = 0


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:   # writes are atomic: this file was damaged after the fact
        raise ValueError(f"{path}: corrupted ({e.msg}); delete it (and the extraction beside it) to start over") from None


def _diff(old: dict, new: dict) -> str:
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} asked" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k))
