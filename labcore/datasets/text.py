"""Character-level text over any local file (tiny Shakespeare, OpenWebText samples, ...).

nanoGPT's shakespeare_char recipe: the vocabulary is the sorted set of characters in the file, the
first (1 - val_frac) of the text trains and the rest validates, and a batch is `batch_size` random
windows of `block_size + 1` characters (input = window[:-1], target = window[1:]).

A corpus is read from its local path first. Only when the file is missing, a `url` is given and the
machine is not marked offline (`LAB_OFFLINE=1` or `HF_HUB_OFFLINE=1`) is it downloaded, atomically,
to that path; otherwise the error says where to put the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

OFFLINE_VARS = ("LAB_OFFLINE", "HF_HUB_OFFLINE")


class CorpusNotFoundError(FileNotFoundError):
    def __init__(self, path: Path, url: str | None, why: str):
        where = f"put the text file at {path}" + (f" (it is downloaded from {url} when online)" if url else "")
        super().__init__(f"text corpus {path} not found: {why}; {where}")
        self.path, self.url, self.why = path, url, why

    def __reduce__(self):  # sweep launchers pickle a failed job's error back to the driver
        return type(self), (self.path, self.url, self.why)


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_VARS)


def corpus_path(path: str | os.PathLike, url: str | None = None, stream: dict | None = None) -> Path:
    """The local corpus file, fetched to `path` first if it is missing and that is allowed: downloaded
    from `url`, or the first `stream["n_chars"]` characters of a Hugging Face dataset streamed
    (`stream`: repo, n_chars, split, text_field; `labcore.datasets.hub.write_streamed_text`)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    source = url or (stream and f"the Hugging Face dataset {stream['repo']}")
    if not source:
        raise CorpusNotFoundError(path, url, "no such file and no download url")
    if offline():
        raise CorpusNotFoundError(path, source, "no such file, and downloads are off (offline)")
    if stream:
        from labcore.datasets.hub import write_streamed_text
        try:
            write_streamed_text(path, **stream)
        except Exception as e:
            raise CorpusNotFoundError(path, source, f"streaming failed ({type(e).__name__}: {e})") from None
        return path
    import urllib.request

    from labcore.artifacts import atomic_path
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(path) as tmp:
            tmp.write_bytes(response.read())
    except OSError as e:
        raise CorpusNotFoundError(path, url, f"download failed ({e})") from None
    return path


class CharText:
    """A character-level corpus split into train/val token tensors, with random-window batches."""

    def __init__(self, path: str | os.PathLike, block_size: int, val_frac: float = 0.1,
                 url: str | None = None, max_chars: int | None = None, stream: dict | None = None):
        if not 0 < val_frac < 1:
            raise ValueError(f"val_frac must be in (0, 1), got {val_frac}")
        self.path = corpus_path(path, url, stream)
        text = self.path.read_text(encoding="utf-8")
        if max_chars is not None:
            text = text[:max_chars]
        self.chars = sorted(set(text))
        self._index = {c: i for i, c in enumerate(self.chars)}
        data = torch.tensor(self.encode(text), dtype=torch.long)
        n_train = int(len(data) * (1 - val_frac))
        self.train, self.val = data[:n_train], data[n_train:]
        self.block_size = block_size
        for split, part in (("train", self.train), ("val", self.val)):
            if len(part) <= block_size:
                raise ValueError(f"{self.path}: the {split} split has {len(part)} characters, "
                                 f"fewer than block_size + 1 = {block_size + 1}")

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self._index[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def batch(self, split: str, batch_size: int, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each [batch_size, block_size], from random windows of `split`."""
        data = {"train": self.train, "val": self.val}[split]
        starts = torch.randint(len(data) - self.block_size, (batch_size,), generator=generator)
        windows = torch.stack([data[s:s + self.block_size + 1] for s in starts.tolist()])
        return windows[:, :-1], windows[:, 1:]


class TextSamples:
    """`n_samples` passages of `sample_chars` characters, spread evenly over a local text file (the
    samples a pretrained model's tokenizer reads in analysis jobs; each is cut to the job's token length)."""

    def __init__(self, path: str | os.PathLike, n_samples: int, sample_chars: int = 2000, url: str | None = None):
        if n_samples < 1 or sample_chars < 1:
            raise ValueError(f"n_samples and sample_chars must be >= 1, got {n_samples}, {sample_chars}")
        self.path, self.url, self.n_samples, self.sample_chars = path, url, n_samples, sample_chars

    def texts(self) -> list[str]:
        text = corpus_path(self.path, self.url).read_text(encoding="utf-8")
        if len(text) < self.sample_chars:
            raise ValueError(f"{self.path}: {len(text)} characters, fewer than sample_chars={self.sample_chars}")
        stride = max(1, (len(text) - self.sample_chars) // max(1, self.n_samples - 1))
        starts = [min(i * stride, len(text) - self.sample_chars) for i in range(self.n_samples)]
        return [text[s:s + self.sample_chars] for s in starts]
