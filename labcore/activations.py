"""Activation extraction through named hooks.

One forward pass per batch captures every requested hook. `extract_to_dir` streams the rows
straight into preallocated, memory-mapped .npy files (one per hook) plus an `activations.json`
describing them, so memory is bounded by a batch, not by the dataset; `load_activations` reads
them back in their dtype. `extract` is the single-hook, in-RAM form. Both stop the forward pass
once the deepest requested hook has fired and count non-finite values while writing.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from labcore.artifacts import atomic_write_json
from labcore.hooks import HookedModel, HookPoint, StopForward, UnknownHookError

METADATA_FILE = "activations.json"
FORMAT_VERSION = 1
# storage dtype -> (torch dtype written, numpy dtype on disk); numpy has no bfloat16, so its bits go as uint16
STORAGE_DTYPES = {"float32": (torch.float32, np.float32), "float16": (torch.float16, np.float16),
                  "bfloat16": (torch.bfloat16, np.uint16)}
# these hooks are [batch, head_index, query_pos, key_pos]: dim 1 is not a sequence position
_POSITION_NOT_DIM_1 = ("hook_attn_scores", "hook_pattern")


class NonFiniteActivationsError(ValueError):
    pass


def extract_to_dir(model: HookedModel, tokens: torch.Tensor | np.ndarray,
                   hook_names: Iterable[str] | Callable[[str], bool], directory: str | Path, *,
                   position: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
                   dtype: str = "float32", padding_mask: np.ndarray | torch.Tensor | None = None,
                   ids: np.ndarray | torch.Tensor | Sequence[int] | None = None, batch_size: int = 64,
                   early_exit: bool = True, desc: str = "extract", progress: bool = True) -> dict:
    """Stream the activations of `hook_names` (names or a predicate) for every row of `tokens` [n, seq]
    into `<directory>/<hook name>.npy`, and describe them in `<directory>/activations.json`.

    position: None keeps every position ([n, seq, ...] per hook); an int keeps that position of
      every row (negative counts from the end); an array [n] keeps one position per row (e.g. each
      text's last real token), saved as positions.npy. Positions index dim 1 of each hook.
    dtype: "float32", "float16" or "bfloat16" (stored as its uint16 bits; `load_activations`
      returns a bfloat16 tensor). Non-finite values are counted after this conversion, so float16
      overflow is reported too.
    padding_mask [n, seq] (bool, True = real token) and ids [n] (int64), when given, are saved as
      padding_mask.npy and ids.npy; positions chosen per row must be real tokens.
    early_exit: end each forward pass once the deepest requested hook has fired. A model that runs
      a hook point more than once per forward (shared blocks) needs early_exit=False.

    Returns the metadata written to activations.json, including each hook's non-finite counts
    (a warning is issued when any are found; `raise_if_non_finite` refuses them).
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    names = _resolve_names(model, hook_names)
    n, seq_len = tokens.shape[0], tokens.shape[1]
    positions = _check_positions(position, n, seq_len, padding_mask, names)
    row_info = {"padding_mask": None if padding_mask is None else np.asarray(padding_mask, dtype=np.bool_),
                "ids": None if ids is None else np.asarray(ids, dtype=np.int64),
                "positions": positions.numpy() if isinstance(positions, torch.Tensor) else None}
    if row_info["ids"] is not None and row_info["ids"].shape != (n,):
        raise ValueError(f"ids have shape {row_info['ids'].shape}, expected [n] = ({n},)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    order, shapes = _probe(model, tokens, names)
    torch_dtype, np_dtype = STORAGE_DTYPES[dtype]
    files = {name: f"{name}.npy" for name in names}
    outputs = {name: NpyRowWriter(directory / files[name], (n, *_row_shape(shapes[name], positions)), np_dtype)
               for name in names}
    try:
        counts = _stream(model, tokens, outputs, positions, batch_size, torch_dtype,
                         stop_after=order[-1] if early_exit else None, desc=desc, progress=progress)
    finally:
        for out in outputs.values():
            out.close()

    for key, array in row_info.items():
        if array is not None:
            np.save(directory / f"{key}.npy", array, allow_pickle=False)
    meta = {
        "format": FORMAT_VERSION,
        "dtype": dtype,
        "rows": n,
        "seq_len": seq_len,
        "position": "per_row" if isinstance(positions, torch.Tensor) else positions,
        "hooks": {name: {"file": files[name], "shape": [n, *_row_shape(shapes[name], positions)],
                         "stored_as": np.dtype(np_dtype).name,
                         "non_finite_values": counts[name][0], "non_finite_rows": counts[name][1]}
                  for name in names},
        **{key: None if array is None else f"{key}.npy" for key, array in row_info.items()},
        "forward_stopped_after": order[-1] if early_exit else None,
    }
    atomic_write_json(directory / METADATA_FILE, meta)
    _warn_non_finite(meta)
    return meta


@torch.no_grad()
def extract(model: HookedModel, tokens: torch.Tensor, hook_name: str, position: int | None = None,
            batch_size: int = 4096, desc: str = "extract") -> np.ndarray:
    """Activations at `hook_name` for every row of `tokens`, at one sequence `position` (or all), in RAM.

    Returns float32 [n, d] (one position) or [n, pos, d] (all positions). For several hooks, or
    datasets larger than RAM, use `extract_to_dir`.
    """
    names = _resolve_names(model, [hook_name])
    positions = _check_positions(position, tokens.shape[0], tokens.shape[1], None, names)
    order, shapes = _probe(model, tokens, names)
    out = _RowsInRam((tokens.shape[0], *_row_shape(shapes[hook_name], positions)), np.float32)
    _stream(model, tokens, {hook_name: out}, positions, batch_size, torch.float32,
            stop_after=order[-1], desc=f"{desc} {hook_name}", progress=True)
    return out.array


def read_metadata(directory: str | Path) -> dict:
    return json.loads((Path(directory) / METADATA_FILE).read_text())


def load_activations(directory: str | Path, hook_name: str, *, as_tensor: bool = False,
                     mmap_mode: bool = True) -> np.ndarray | torch.Tensor:
    """One hook's activations written by `extract_to_dir`, in the dtype they were stored in.

    as_tensor: a torch tensor over the same memory map (no copy; bfloat16 arrays come back as
    torch.bfloat16). Otherwise a numpy array; numpy has no bfloat16, so those are widened to float32
    in RAM (exactly: bfloat16 is the top half of a float32).
    """
    meta = read_metadata(directory)
    try:
        entry = meta["hooks"][hook_name]
    except KeyError:
        raise UnknownHookError(hook_name, meta["hooks"]) from None
    # copy-on-write mapping: writable for torch.from_numpy, never written back to the cache entry
    raw = np.load(Path(directory) / entry["file"], mmap_mode="c" if mmap_mode else None, allow_pickle=False)
    if meta["dtype"] == "bfloat16":
        if as_tensor:
            return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return torch.from_numpy(raw) if as_tensor else raw


def raise_if_non_finite(meta: dict, where: str = "") -> None:
    """Refuse an extraction whose metadata counted NaN/Inf values, naming the hooks and counts."""
    bad = {name: h for name, h in meta["hooks"].items() if h["non_finite_values"]}
    if bad:
        raise NonFiniteActivationsError("; ".join(
            f"{where}{name}: {h['non_finite_values']} non-finite values (NaN/Inf) in {h['non_finite_rows']} "
            f"of {meta['rows']} rows" for name, h in bad.items()) + "; refusing to train on them")


def check_finite(array: np.ndarray, name: str) -> None:
    """Refuse activations containing NaN/Inf, saying how many values and rows are affected."""
    bad = ~np.isfinite(array)
    if bad.any():
        rows = int(bad.reshape(len(array), -1).any(1).sum())
        raise NonFiniteActivationsError(
            f"{name}: {int(bad.sum())} non-finite values (NaN/Inf) in {rows} of {len(array)} rows; "
            "refusing to train on them")


# ---- the streaming loop ------------------------------------------------------------------------
@torch.no_grad()
def _stream(model: HookedModel, tokens, outputs: dict, positions, batch_size: int, torch_dtype: torch.dtype,
            stop_after: str | None, desc: str, progress: bool) -> dict[str, list[int]]:
    """Run `model` over `tokens` in batches, each hook writing its rows into `outputs[name]` as it fires.

    Returns {hook name: [non-finite values, rows with any]}.
    """
    device = next(model.parameters()).device
    n = tokens.shape[0]
    if isinstance(positions, torch.Tensor):
        positions = positions.to(device)
    counts = {name: [0, 0] for name in outputs}
    batch = {"start": 0, "stop": 0}

    def writer(name: str):
        out = outputs[name]

        def write(act: torch.Tensor, hook: HookPoint) -> None:
            start, stop = batch["start"], batch["stop"]
            if act.shape[0] != stop - start:
                raise ValueError(f"hook {name} gave shape {tuple(act.shape)} for a batch of {stop - start} rows: "
                                 "extraction needs a leading batch dimension")
            if isinstance(positions, torch.Tensor):
                act = act[torch.arange(stop - start, device=act.device), positions[start:stop]]
            elif positions is not None:
                act = act[:, positions]
            act = act.to(torch_dtype)
            # a finite float32 sum proves every value finite, at a tenth of isfinite's cost; a sum
            # that overflows only sends the batch to the exact count
            if not torch.isfinite(act.sum(dtype=torch.float32)):
                bad = ~torch.isfinite(act)
                counts[name][0] += int(bad.sum())
                counts[name][1] += int(bad.flatten(1).any(1).sum()) if bad.dim() > 1 else int(bad.sum())
            act = act.cpu()
            out.write(start, (act.view(torch.int16) if torch_dtype == torch.bfloat16 else act).numpy())
            if name == stop_after:
                raise StopForward
        return write

    with model.hooks([(name, writer(name)) for name in outputs]), _progress_bar(n, desc, progress) as bar:
        for start in range(0, n, batch_size):
            batch["start"], batch["stop"] = start, min(start + batch_size, n)
            try:
                model(_rows(tokens, start, batch["stop"], device))
            except StopForward:
                pass
            bar.update(batch["stop"] - start)
    return counts


def _progress_bar(total: int, desc: str, enabled: bool):
    from labcore.output import progress_bar
    return progress_bar(total, desc, unit="rows", enabled=enabled)


def _probe(model: HookedModel, tokens, names: list[str]) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """Forward the first row until every requested hook has fired: their firing order and shapes."""
    if tokens.shape[0] == 0:
        raise ValueError("no rows to extract: tokens is empty")
    order, shapes = [], {}

    def recorder(name: str):
        def record(act: torch.Tensor, hook: HookPoint) -> None:
            if name not in shapes:
                order.append(name)
                shapes[name] = tuple(act.shape)
                if len(shapes) == len(names):
                    raise StopForward
        return record

    with torch.no_grad(), model.hooks([(name, recorder(name)) for name in names]):
        try:
            model(_rows(tokens, 0, 1, next(model.parameters()).device))
        except StopForward:
            pass
    missing = [name for name in names if name not in shapes]
    if missing:
        raise ValueError(f"hooks {missing} did not fire during a forward pass; nothing to extract from them")
    return order, shapes


def _resolve_names(model: HookedModel, hook_names: Iterable[str] | Callable[[str], bool]) -> list[str]:
    if callable(hook_names):
        names = model.select_hook_names(hook_names)
    else:
        names = list(dict.fromkeys(hook_names))
        model.check_hook_names(names)
    if not names:
        raise ValueError("no hook selected for extraction")
    return names


def _check_positions(position, n: int, seq_len: int, padding_mask, names: list[str]):
    """None, an int, or a LongTensor [n] of per-row positions, checked against the shapes and mask."""
    if padding_mask is not None and tuple(padding_mask.shape) != (n, seq_len):
        raise ValueError(f"padding_mask has shape {tuple(padding_mask.shape)}, expected [n, seq] = {(n, seq_len)}")
    if position is None:
        return None
    wrong = [name for name in names if name.endswith(_POSITION_NOT_DIM_1)]
    if wrong:
        raise ValueError(f"{wrong} are [batch, head_index, query_pos, key_pos]: extract them with position=None")
    if isinstance(position, (int, np.integer)):
        if not -seq_len <= position < seq_len:
            raise ValueError(f"position {position} is outside sequences of length {seq_len}")
        if padding_mask is not None and not np.asarray(padding_mask)[:, position].all():
            raise ValueError(f"position {position} is padding in some rows")
        return int(position)
    per_row = torch.as_tensor(np.asarray(position), dtype=torch.int64)
    if per_row.shape != (n,):
        raise ValueError(f"per-row positions have shape {tuple(per_row.shape)}, expected [n] = ({n},)")
    if n and not (0 <= int(per_row.min()) and int(per_row.max()) < seq_len):
        raise ValueError(f"per-row positions must lie in [0, {seq_len})")
    if padding_mask is not None and not np.asarray(padding_mask)[np.arange(n), per_row.numpy()].all():
        raise ValueError("some per-row positions point at padding")
    return per_row


def _row_shape(probe_shape: tuple[int, ...], positions) -> tuple[int, ...]:
    return probe_shape[2:] if positions is not None else probe_shape[1:]


def _rows(tokens, start: int, stop: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(tokens[start:stop]).to(device)


def _warn_non_finite(meta: dict) -> None:
    for name, h in meta["hooks"].items():
        if h["non_finite_values"]:
            warnings.warn(f"{name}: {h['non_finite_values']} non-finite values (NaN/Inf) in "
                          f"{h['non_finite_rows']} of {meta['rows']} rows", stacklevel=3)


# ---- where rows go -----------------------------------------------------------------------------
class _RowsInRam:
    def __init__(self, shape: tuple[int, ...], dtype):
        self.array = np.empty(shape, dtype)

    def write(self, start: int, values: np.ndarray) -> None:
        self.array[start:start + len(values)] = values

    def close(self) -> None:
        pass


class NpyRowWriter:
    """A preallocated .npy file whose rows are written in place (`os.pwrite` at each row's offset).

    Plain writes, not a memory map: nothing of the file counts towards this process's resident
    memory however large the dataset, and no page faults on fresh pages (writing through a shared
    map spent ~5% of a MiniLM extraction in them). No fsync at the end, so finishing does not wait
    for the disk; the file is as durable as one written by np.save. `flush` makes it durable.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, reopen: bool = False):
        """reopen: continue writing an existing file of this shape and dtype (a resumed extraction)."""
        if reopen:
            existing = np.load(path, mmap_mode="r")
            if existing.shape != tuple(shape) or existing.dtype != np.dtype(dtype):
                raise ValueError(f"{path} holds {existing.dtype}{list(existing.shape)}, not {np.dtype(dtype)}{list(shape)}")
            self._data_offset = existing.offset
            del existing
        else:
            created = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)  # header + size
            self._data_offset = created.offset
            del created
        self.dtype, self.shape = np.dtype(dtype), tuple(shape)
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(path, os.O_WRONLY)

    def write(self, start: int, values: np.ndarray) -> None:
        if start + len(values) > self.shape[0]:
            raise ValueError(f"rows {start}:{start + len(values)} do not fit {self.shape[0]} rows")
        data = memoryview(np.ascontiguousarray(values, dtype=self.dtype)).cast("B")
        offset = self._data_offset + start * self._row_bytes
        while data:                       # pwrite may write less than asked (very large batches)
            done = os.pwrite(self._fd, data, offset)
            data, offset = data[done:], offset + done

    def flush(self) -> None:
        """Make the rows written so far durable: a checkpoint must not outrun its data."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
