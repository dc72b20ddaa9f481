"""Read back an offline W&B run: wandb 0.31 writes `run-*.wandb` from its Go core and ships no
Python reader, so the tests parse the file themselves.

The file is W&B's datastore, LevelDB's log format (github.com/google/leveldb doc/log_format.md):
a 7-byte header (ident ":W&B", magic 0xBEE1, version 0), then 32 KiB blocks, counted from the start
of the file, of chunks `crc32(type + data) uint32 | length uint16 | type uint8 | data`. A record
too long for what is left of a block is split FIRST, MIDDLE..., LAST; a block tail shorter than a
chunk header is zero padding. Each record is a `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list:
    """Every Record in a `.wandb` file, in order; raises on a bad header, checksum or chunk order."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: not a W&B datastore (header {ident!r} {magic:#x} {version})")
    records, pending, pos = [], None, HEADER.size
    while pos + CHUNK.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK.size:  # block trailer: padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero fill (a block trailer or a preallocated end)
            pos += BLOCK - pos % BLOCK
            continue
        body = data[pos + CHUNK.size: pos + CHUNK.size + length]
        if zlib.crc32(body, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos}")
        pos += CHUNK.size + length
        if kind == FULL and pending is None:
            records.append(Record.FromString(body))
        elif kind == FIRST and pending is None:
            pending = body
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += body
            if kind == LAST:
                records.append(Record.FromString(pending))
                pending = None
        else:
            raise ValueError(f"{path}: chunk type {kind} out of order at byte {pos}")
    return records


def read_finished_run(run_dir: str | Path, timeout: float = 120.0) -> list:
    """The records of the run in `run_dir` once W&B has written all of them.

    `wandb.finish()` returns before the file is complete: it tells W&B's core service that the run is
    done without waiting (`ServiceConnection.inform_finish` publishes, it does not deliver), and the
    core writes the last chunks and closes the file on its own time. A reader in the same process
    must wait for the event that ends the file: its `exit` record, the last one the core writes.
    Until then the file may end in a half-written chunk (a bad checksum), which is retried.
    """
    deadline, last = time.monotonic() + timeout, "no run-*.wandb file"
    while time.monotonic() < deadline:
        files = sorted(Path(run_dir).glob("run-*.wandb"))
        if files:
            try:
                records = read_records(files[0])
                if records and records[-1].WhichOneof("record_type") == "exit":
                    return records
                last = f"{files[0]}: no exit record yet ({len(records)} records)"
            except (ValueError, struct.error) as err:  # a chunk being written
                last = str(err)
        time.sleep(0.05)
    raise TimeoutError(f"W&B did not finish writing {run_dir} in {timeout:.0f} s: {last}")


def _json_items(items) -> dict:
    """Config and summary items carry `key` (top level) or `nested_key` (a path) and a JSON value."""
    out = {}
    for item in items:
        key = item.key or ".".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def config_of(records) -> dict:
    """The run's config as W&B holds it, merged over every config record (top-level key -> value)."""
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update(_json_items(r.config.update))
        elif r.WhichOneof("record_type") == "run" and r.run.config.update:
            config.update(_json_items(r.run.config.update))
    return config


def summary_of(records) -> dict:
    """The run's summary as its summary records leave it (W&B's core also writes one per history step)."""
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_json_items(r.summary.update))
    return summary


def history_of(records) -> list[dict]:
    """One dict per logged step."""
    return [_json_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
