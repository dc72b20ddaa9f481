import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from filelock import FileLock

from labcore.artifacts import atomic_write_json, sha256_file
from labcore.store import (CacheFileError, cached, entry_dir, load_array, problems, read_files_json,
                           recorded_sha256, save_array)
from labcore.store import main as store_main


def test_built_once_and_reused(tmp_path):
    calls = []

    def build(d):
        calls.append(1)
        save_array(d / "a.npy", np.arange(6.0).reshape(2, 3))

    a = cached(tmp_path, "acts", {"x": 1}, build, log=lambda m: None)
    b = cached(tmp_path, "acts", {"x": 1}, build, log=lambda m: None)
    c = cached(tmp_path, "acts", {"x": 2}, build, log=lambda m: None)
    assert a == b != c and len(calls) == 2
    arr = load_array(a / "a.npy")
    assert isinstance(arr, np.memmap) and arr[1, 2] == 5.0


def test_concurrent_jobs_build_once(tmp_path):
    calls = []

    def build(d):
        calls.append(1)
        save_array(d / "a.npy", np.zeros(3))

    threads = [threading.Thread(target=cached, args=(tmp_path, "k", {"y": 0}, build), kwargs={"log": lambda m: None})
               for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1


def test_failed_build_leaves_nothing(tmp_path):
    def build(d):
        (d / "partial").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached(tmp_path, "k", {"z": 0}, build, log=lambda m: None)
    assert [p.name for p in (tmp_path / "k").iterdir() if not p.name.endswith(".lock")] == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": 1})

    class Bad:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": Bad()})
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_writes_have_normal_permissions(tmp_path):
    import os
    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---- entries that are not what their COMPLETE marker claims -------------------------------------

def _counting_build(calls):
    def build(d):
        calls.append(1)
        save_array(d / "a.npy", np.arange(100.0))
        (d / "sub").mkdir()
        atomic_write_json(d / "sub" / "info.json", {"n": 100})
    return build


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_file_is_reported_naming_it_and_rebuilt(tmp_path, damage):
    calls, logs = [], []
    entry = cached(tmp_path, "acts", {"x": 1}, _counting_build(calls), log=logs.append)
    path = entry / "a.npy"
    if damage == "truncate":
        os.truncate(path, path.stat().st_size - 16)
    else:
        path.unlink()
    again = cached(tmp_path, "acts", {"x": 1}, _counting_build(calls), log=logs.append)
    assert again == entry and len(calls) == 2
    assert any(str(path) in m and "rebuilding" in m for m in logs), logs
    assert load_array(path)[99] == 99.0 and problems(entry, deep=True) == []


def test_truncated_file_loads_with_an_error_naming_it(tmp_path):
    path = tmp_path / "a.npy"
    save_array(path, np.arange(100.0))
    os.truncate(path, path.stat().st_size - 16)
    for mmap in (True, False):
        with pytest.raises(CacheFileError, match=re.escape(str(path))):
            load_array(path, mmap=mmap)


def test_corrupted_file_is_found_by_verify_naming_it(tmp_path, capsys):
    calls = []
    entry = cached(tmp_path, "acts", {"x": 1}, _counting_build(calls), log=lambda m: None)
    path = entry / "a.npy"
    data = bytearray(path.read_bytes())
    data[-8:] = b"\xff" * 8                     # same size, different bytes: only the hash tells
    path.write_bytes(bytes(data))
    assert cached(tmp_path, "acts", {"x": 1}, _counting_build(calls), log=lambda m: None) == entry
    assert len(calls) == 1                      # a load checks sizes only, not hashes

    assert store_main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"BAD   acts/{entry.name}: {path}: sha256 differs" in out and "1 bad" in out

    proc = subprocess.run([sys.executable, "-m", "labcore.store", "verify", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and str(path) in proc.stdout, proc.stdout + proc.stderr

    assert store_main(["verify", str(tmp_path), "--delete"]) == 1
    assert not entry.exists()
    assert store_main(["verify", str(tmp_path)]) == 0
    cached(tmp_path, "acts", {"x": 1}, _counting_build(calls), log=lambda m: None)
    assert len(calls) == 2 and problems(entry, deep=True) == []


def test_concurrent_jobs_finding_a_bad_entry_rebuild_it_once(tmp_path):
    calls = []
    entry = cached(tmp_path, "k", {"y": 0}, _counting_build(calls), log=lambda m: None)
    os.truncate(entry / "a.npy", 100)
    start, errors = threading.Barrier(4), []

    def job():
        start.wait()
        try:
            cached(tmp_path, "k", {"y": 0}, _counting_build(calls), log=lambda m: None)
            assert load_array(entry / "a.npy")[99] == 99.0
        except BaseException as e:      # an exception in a thread would not fail the test
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == [] and len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [entry.name, entry.name + ".lock"]


def test_entry_built_before_files_json_still_loads_and_gets_one(tmp_path):
    calls, logs = [], []
    entry = cached(tmp_path, "acts", {"x": 1}, _counting_build(calls), log=lambda m: None)
    (entry / "files.json").unlink()             # what entries looked like before this change
    assert cached(tmp_path, "acts", {"x": 1}, _counting_build(calls), log=logs.append) == entry
    assert len(calls) == 1 and any("older version" in m for m in logs)
    assert read_files_json(entry)["origin"] == "adopted" and problems(entry, deep=True) == []
    assert store_main(["verify", str(tmp_path)]) == 0

    (entry / "files.json").unlink()             # an old entry with a truncated array: its header tells
    os.truncate(entry / "a.npy", 200)
    cached(tmp_path, "acts", {"x": 1}, _counting_build(calls), log=logs.append)
    assert len(calls) == 2 and any(str(entry / "a.npy") in m and "header" in m for m in logs), logs


def test_temp_dir_of_a_killed_build_is_removed(tmp_path):
    name = entry_dir(tmp_path, "k", {"z": 1}).name
    stale = tmp_path / "k" / f".{name}.x1y2z3"  # what mkdtemp left when the builder was killed
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "partial.npy").write_bytes(b"half")
    entry = cached(tmp_path, "k", {"z": 1}, _counting_build([]), log=lambda m: None)
    assert not stale.exists() and (entry / "COMPLETE").exists()


def test_verify_deletes_stale_temp_dirs_but_not_a_live_build(tmp_path, capsys):
    (tmp_path / "k").mkdir()
    name = entry_dir(tmp_path, "k", {"z": 1}).name
    temp = tmp_path / "k" / f".{name}.x1y2z3"
    temp.mkdir()
    with FileLock(str(tmp_path / "k" / name) + ".lock"):      # a builder at work
        assert store_main(["verify", str(tmp_path), "--delete"]) == 0
        assert temp.exists()
    assert store_main(["verify", str(tmp_path), "--delete"]) == 0   # garbage, not a bad entry
    assert not temp.exists() and f"STALE {temp}" in capsys.readouterr().out


def test_entry_honours_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        entry = cached(tmp_path, "acts", {"x": 1}, _counting_build([]), log=lambda m: None)
    finally:
        os.umask(old)
    paths = [entry, *entry.rglob("*")]
    assert {p.name for p in paths} >= {"a.npy", "sub", "info.json", "key.json", "files.json", "COMPLETE"}
    for p in paths:
        assert p.stat().st_mode & 0o777 == (0o775 if p.is_dir() else 0o664), p


def test_recorded_sha256_is_the_file_hash(tmp_path):
    entry = cached(tmp_path, "acts", {"x": 1}, _counting_build([]), log=lambda m: None)
    assert recorded_sha256(entry, "a.npy") == sha256_file(entry / "a.npy")
    (entry / "files.json").unlink()
    assert recorded_sha256(entry, "a.npy") == sha256_file(entry / "a.npy")


def test_atomic_write_refuses_to_replace_a_special_file_or_directory(tmp_path):
    """Renaming over os.devnull once turned this machine's /dev/null into a regular file (a benchmark
    passed it as a table path). A FIFO stands in for the device here."""
    import os

    from labcore.artifacts import atomic_write_text
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        with pytest.raises(ValueError, match="not a regular file"):
            atomic_write_text(target, "x")
    assert not fifo.is_file()
