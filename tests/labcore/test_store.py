import threading

import numpy as np
import pytest

from labcore.artifacts import atomic_write_json
from labcore.store import cached, load_array, save_array


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
