"""Content-addressed cache for expensive, deterministic inputs (base models, activations).

An entry lives at `<cache_dir>/<kind>/<sha256(key)[:16]>/`. It is built once, in a temporary
directory renamed into place when complete, under a file lock: when a sweep's jobs start
together, the first builds and the others wait and then reuse it. An entry holds the data the
build wrote, `key.json` (what the hash stands for), `files.json` (size and sha256 of every file,
recorded at build) and the empty `COMPLETE` marker.

The marker alone is not trusted: a disk that fills up, a copy between clusters cut short or a
stray write can leave an entry that is marked complete but is not. So every use of an entry
checks each file's size against `files.json` and that .npy/.safetensors headers agree with the
file's length (a stat and a header read per file); an entry that fails is reported, naming the
file, and rebuilt. Hashes are checked at build and on demand by `python -m labcore.store verify`,
since rereading gigabytes of activations in every job would cost more than the jobs.

Rules that keep concurrent jobs from undoing each other's work:
- the lock (`<entry>.lock` beside the entry) is held by whoever builds, rebuilds, deletes or
  records the sizes of an entry; whoever takes it re-checks the entry first, because another job
  may have repaired it while this one waited;
- a bad entry is renamed aside before it is deleted, so readers see the whole entry or none;
- `.<hash>.*` beside an entry are only made by the lock holder, so the next holder finds any left
  there to be from a builder that was killed, and removes them.

Entries honour the umask (a group-shared cache works with umask 002), not mkdtemp's 0700.
Entries built before `files.json` existed stay usable: their headers are checked, and the first
job that uses one records its sizes and hashes (as found, so they vouch only for the entry not
changing afterwards); in a cache this job cannot write to, it is used as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from filelock import FileLock, Timeout

from labcore.artifacts import atomic_write_json, sha256_file, sha256_json

COMPLETE = "COMPLETE"
FILES = "files.json"
FORMAT = 1
_HASH = re.compile(r"[0-9a-f]{16}")


class CacheFileError(ValueError):
    """A file of a cache entry that is missing, has the wrong size or does not parse.

    A ValueError, like numpy's own load errors, so callers that caught those still do; unlike
    them the message starts with the file's path."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # sweep launchers pickle a failed job's error back to the driver
        return type(self), (self.path, self.problem)


def entry_dir(cache_dir: str | os.PathLike, kind: str, key: dict[str, Any]) -> Path:
    return Path(cache_dir) / kind / sha256_json(key)[:16]


def cached(cache_dir: str | os.PathLike, kind: str, key: dict[str, Any],
           build: Callable[[Path], None], log: Callable[[str], None] = print) -> Path:
    """Return the entry directory for `key`, calling `build(tmp_dir)` first if it does not exist
    or is bad (a file missing, of the wrong size, or with a header that does not match it)."""
    final = entry_dir(cache_dir, kind, key)
    found: list[CacheFileError] | None = None      # None: no complete entry when we looked
    if (final / COMPLETE).exists():
        found = problems(final)
        if not found and (final / FILES).exists():
            return final
        if found:
            log(f"[cache] {kind} {final.name}: bad entry, rebuilding it: " + "; ".join(map(str, found)))
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final) + ".lock")
    try:
        lock.acquire()
    except OSError as e:
        if found == []:   # a good entry without files.json in a cache we cannot write to: use it as is
            log(f"[cache] {kind} {final.name}: cannot take the lock to record its file sizes ({e}); using it as it is")
            return final
        raise
    try:
        return _under_lock(final, kind, key, build, log, found)
    finally:
        lock.release()


def _under_lock(final: Path, kind: str, key: dict, build: Callable[[Path], None],
                log: Callable[[str], None], found: list[CacheFileError] | None) -> Path:
    _remove_stale_temps(final, log)
    if (final / COMPLETE).exists():
        bad = problems(final)               # again: another job may have repaired it while we waited
        if not bad:
            if not (final / FILES).exists():
                _adopt(final, kind, log)
            elif found is None:
                log(f"[cache] {kind} {final.name}: built by another job, reusing")
            elif found:
                log(f"[cache] {kind} {final.name}: rebuilt by another job, reusing")
            return final
        if not found:
            log(f"[cache] {kind} {final.name}: bad entry, rebuilding it: " + "; ".join(map(str, bad)))
        _discard(final)
    elif final.exists():                    # left without the marker by an older version of this code
        _discard(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        log(f"[cache] {kind} {final.name}: building")
        build(tmp)
        atomic_write_json(tmp / "key.json", key)
        _write_files_json(tmp, origin="built")
        (tmp / COMPLETE).touch()
        _share(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _adopt(final: Path, kind: str, log: Callable[[str], None]) -> None:
    """Record sizes and hashes of an entry built before files.json existed (under the lock)."""
    try:
        _write_files_json(final, origin="adopted")
        os.chmod(final / FILES, 0o666 & ~_umask())   # atomic writes may follow an umask read at import
    except OSError as e:
        log(f"[cache] {kind} {final.name}: cannot record its file sizes ({e}); using it as it is")
    else:
        log(f"[cache] {kind} {final.name}: built by an older version; recorded its file sizes and hashes")


def _remove_stale_temps(final: Path, log: Callable[[str], None]) -> None:
    """Remove `.<hash>.*` beside `final`; only call with the entry's lock held, which proves that
    whoever made them is gone."""
    for p in final.parent.glob(f".{final.name}.*"):
        try:
            _remove(p)
        except OSError as e:
            log(f"[cache] cannot remove {p}, left by a killed build: {e}")
        else:
            log(f"[cache] removed {p}, left by a killed build")


def _remove(p: Path) -> None:
    try:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    except FileNotFoundError:
        pass


def _discard(final: Path) -> None:
    """Rename aside, then delete: a reader never sees half an entry, and a delete cut short
    leaves a `.<hash>.*` that the next lock holder removes."""
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.bad.", dir=final.parent))
    os.replace(final, aside / "entry")
    shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
    # Read, not set-and-restore: os.umask(0) would briefly make files that other threads create
    # world-writable. /proc has the Umask line since Linux 4.7.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _share(root: Path) -> None:
    """Give the entry the modes the umask asks for: mkdtemp makes 0700, and helpers that fix a
    file's mode may have read the umask long before this build."""
    mask = _umask()
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            executable = os.stat(p).st_mode & 0o100
            os.chmod(p, (0o777 if executable else 0o666) & ~mask)


# ---- checking an entry ----------------------------------------------------------------------------

def _data_files(entry: Path) -> list[str]:
    """Every file of the entry but the bookkeeping, as posix paths relative to it."""
    names = (p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file())
    return sorted(n for n in names if n not in (FILES, COMPLETE))


def _write_files_json(entry: Path, origin: str) -> None:
    files = {name: {"size": (entry / name).stat().st_size, "sha256": sha256_file(entry / name)}
             for name in _data_files(entry)}
    atomic_write_json(entry / FILES, {"format": FORMAT, "origin": origin, "files": files})


def read_files_json(entry: str | os.PathLike) -> dict | None:
    """The entry's files.json, None for an entry built before it existed; CacheFileError if unreadable."""
    path = Path(entry) / FILES
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if not isinstance(files, dict) or not all(
                isinstance(r, dict) and isinstance(r.get("size"), int) for r in files.values()):
            raise ValueError("'files' is not a map of name -> {size, sha256}")
        return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheFileError(path, f"unreadable ({e})") from e


def check_file(path: str | os.PathLike) -> None:
    """Raise CacheFileError (naming `path`) if a .npy, .safetensors or .json file does not parse,
    or its header describes more or less data than the file holds. Reads only the header."""
    path = Path(path)
    suffix = path.suffix
    try:
        if suffix == ".npy":
            expected = _npy_size(path)
        elif suffix == ".safetensors":
            expected = _safetensors_size(path)
        elif suffix == ".json":
            json.loads(path.read_text())
            return
        else:
            return
    except FileNotFoundError:
        raise CacheFileError(path, "missing") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, struct.error) as e:
        raise CacheFileError(path, f"not a readable {suffix} file ({e})") from e
    size = path.stat().st_size
    if expected is not None and size != expected:
        raise CacheFileError(path, f"is {size} bytes but its header describes {expected} (truncated or overwritten)")


def _npy_size(path: Path) -> int | None:
    from numpy.lib import format as npy
    with open(path, "rb") as f:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(f)
        else:   # 3.0 (utf-8 field names): rare enough that the size check is left to files.json
            return None
        if dtype.hasobject:
            return None
        return f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _safetensors_size(path: Path) -> int:
    # Format: u64 little-endian header length, JSON header, then the tensors' bytes, whose
    # data_offsets (relative to the end of the header) cover the rest of the file.
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise EOFError(f"{len(raw)} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"header length {n} is implausible")
        header = f.read(n)
        if len(header) < n:
            raise EOFError(f"header of {n} bytes cut at {len(header)}")
    meta = json.loads(header)
    ends = [v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def problems(entry: str | os.PathLike, deep: bool = False) -> list[CacheFileError]:
    """What is wrong with an entry, each naming its file; empty if it is good. Checks the marker,
    each recorded file's presence and size, and the headers of .npy/.safetensors/.json files;
    `deep` also compares every file's sha256 with the one recorded (reads all the data)."""
    entry = Path(entry)
    if not (entry / COMPLETE).exists():
        return [CacheFileError(entry / COMPLETE, "missing: the build did not finish")]
    try:
        recorded = read_files_json(entry)
    except CacheFileError as e:
        return [e]
    names = list(recorded["files"]) if recorded is not None else _data_files(entry)
    found = []
    for name in names:
        path = entry / name
        try:
            if recorded is not None:
                want = recorded["files"][name]
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    raise CacheFileError(path, "missing") from None
                if size != want["size"]:
                    raise CacheFileError(path, f"is {size} bytes, {want['size']} when built (truncated or overwritten)")
            check_file(path)
            if deep and recorded is not None and want.get("sha256") and sha256_file(path) != want["sha256"]:
                raise CacheFileError(path, "sha256 differs from the one recorded when built (corrupted)")
        except CacheFileError as e:
            found.append(e)
        except OSError as e:
            found.append(CacheFileError(path, f"unreadable ({e})"))
    return found


def recorded_sha256(entry: str | os.PathLike, name: str) -> str:
    """sha256 of one file of an entry: the one recorded in files.json (no need to reread a large
    file in every job), else computed."""
    recorded = read_files_json(entry)
    digest = recorded and recorded["files"].get(name, {}).get("sha256")
    return digest or sha256_file(Path(entry) / name)


# ---- arrays ---------------------------------------------------------------------------------------

def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def load_array(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Memory-mapped by default: a sweep's jobs share the page cache instead of copies. A file
    that does not load raises CacheFileError naming it (numpy's own errors name no file)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise CacheFileError(path, f"cannot be loaded as .npy ({e})") from e


def read_key(entry: str | os.PathLike) -> dict:
    return json.loads((Path(entry) / "key.json").read_text())


# ---- command line ---------------------------------------------------------------------------------

def verify(cache_dir: str | os.PathLike, delete: bool = False, out: Callable[[str], None] = print) -> int:
    """Check every entry of `<cache_dir>/<kind>/<hash>` (hashes included). Return the number of
    bad entries. With `delete`, bad entries (re-checked under their lock) and temp dirs of killed
    builds are deleted; a later job that needs a deleted entry rebuilds it."""
    cache_dir = Path(cache_dir)
    n_entries = n_bad = n_old = n_stale = 0
    for kind_dir in sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for entry in sorted(p for p in kind_dir.iterdir() if p.is_dir() and _HASH.fullmatch(p.name)):
            n_entries += 1
            bad = problems(entry, deep=True)
            if not bad:
                n_old += not (entry / FILES).exists()
                continue
            n_bad += 1
            for e in bad:
                out(f"BAD   {kind_dir.name}/{entry.name}: {e}")
            if delete:
                with FileLock(str(entry) + ".lock"):
                    if entry.exists() and problems(entry, deep=True):   # not repaired meanwhile
                        _discard(entry)
                        out(f"deleted {entry}")
        for temp in sorted(p for p in kind_dir.glob(".*") if _HASH.fullmatch(p.name[1:17])):
            # Only the holder of an entry's lock makes its temp dirs: a free lock means a dead builder.
            lock = FileLock(str(kind_dir / temp.name[1:17]) + ".lock", blocking=False)
            try:
                lock.acquire()
            except Timeout:
                continue                         # being built right now
            except OSError as e:
                out(f"?     {temp}: cannot take its entry's lock to tell whether it is stale ({e})")
                continue
            try:
                if temp.exists():
                    n_stale += 1
                    out(f"STALE {temp}: left by a killed build")
                    if delete:
                        _remove(temp)
                        out(f"deleted {temp}")
            finally:
                lock.release()
    out(f"{n_entries} entries: {n_bad} bad, {n_old} built before files.json (headers checked, no hashes); "
        f"{n_stale} temp dirs of killed builds")
    return n_bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labcore.store",
        description="Check a cache made by labcore.store.cached: every entry's files against the sizes and "
                    "sha256 recorded when it was built. Exit status 1 if an entry is bad, 0 otherwise.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check every entry, naming each bad file")
    v.add_argument("cache_dir", type=Path)
    v.add_argument("--delete", action="store_true",
                   help="delete bad entries (the next job that needs one rebuilds it) and temp dirs of killed builds")
    args = parser.parse_args(argv)
    if not args.cache_dir.is_dir():
        parser.error(f"{args.cache_dir} is not a directory")
    return 1 if verify(args.cache_dir, delete=args.delete) else 0


if __name__ == "__main__":
    sys.exit(main())
