"""Batches from in-memory or memory-mapped arrays without per-item Python overhead.

`DataLoader(ArrayBatches(...), batch_size=None, sampler=BatchSampler(...))` indexes the array
once per batch (a list of row indices), instead of once per row and collating thousands of rows.
"""

from __future__ import annotations

from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler


class ArrayBatches(Dataset):
    def __init__(self, *arrays: np.ndarray | torch.Tensor):
        n = {len(a) for a in arrays}
        if len(n) != 1:
            raise ValueError(f"arrays have different lengths: {sorted(n)}")
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, rows: Sequence[int]):
        rows = np.sort(np.asarray(rows))  # sorted reads are sequential on a memory map
        out = tuple(torch.as_tensor(np.asarray(a[rows])) if not isinstance(a, torch.Tensor) else a[rows]
                    for a in self.arrays)
        return out if len(out) > 1 else out[0]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch: a function of (seed, epoch) alone, so a job resumed in the middle
    of epoch e sees exactly the order an uninterrupted run saw (never epoch 0's again)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class EpochBatches:
    """Shuffled batches of rows, one fresh permutation per epoch, resumable mid-epoch.

    `position()` says where iteration starts: (epoch, batches of it already trained on). Inside a
    Lightning fit that is the trainer's own count, restored from a checkpoint on resume
    (`trainer_position`), so the loader needs no state of its own (Lightning prefetches a batch,
    which would put a counter kept here one ahead of what the checkpoint saw). Lightning treats any
    loader with state_dict/load_state_dict as resumable; this one's state lives in the trainer.
    """

    def __init__(self, *arrays, batch_size: int, seed: int, drop_last: bool = False, position=None):
        self.dataset = ArrayBatches(*arrays)
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.position = position or (lambda: (0, 0))

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, skip: int = 0):
        order = epoch_permutation(len(self.dataset), self.seed, epoch)
        for b in range(skip, len(self)):
            yield self.dataset[order[b * self.batch_size:(b + 1) * self.batch_size]]

    def __iter__(self):
        epoch, done = self.position()
        if done >= len(self):  # resumed from a checkpoint taken after an epoch's last step
            epoch, done = epoch + 1, 0
        return self.epoch(epoch, done)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StepBatches:
    """One batch per training step, a function of (seed, step) alone: `make(step, generator)` with a
    generator seeded from both. A resumed fit starts at the step its checkpoint had reached (read from
    the trainer through `position`, as `EpochBatches` does) and sees exactly the batches an
    uninterrupted run would have (random windows of a text, for instance)."""

    def __init__(self, make, steps: int, seed: int, position=None):
        self.make, self.steps, self.seed = make, steps, seed
        self.position = position or (lambda: (0, 0))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        _, done = self.position()
        for step in range(done, self.steps):
            yield self.make(step, torch.Generator().manual_seed(self.seed * 1_000_003 + step))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def batch_loader(*arrays, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False):
    """Batches of rows: shuffled per epoch (`EpochBatches`, iterating epoch 0) or in order."""
    if shuffle:
        return EpochBatches(*arrays, batch_size=batch_size, seed=seed, drop_last=drop_last)
    ds = ArrayBatches(*arrays)
    return DataLoader(ds, batch_size=None, sampler=BatchSampler(SequentialSampler(ds), batch_size, drop_last=drop_last))


def trainer_position(module: L.LightningModule | L.LightningDataModule):
    """Where a loader attached to `module`'s fit starts: (epoch, batches of it already trained on).

    Lightning creates a fit's first iterator before its loops apply a restored checkpoint's
    bookkeeping, so this reads the restored progress as saved: a step saved at the end of a batch
    counts as "processed" (trained on), not yet "completed".
    """
    def position() -> tuple[int, int]:
        trainer = module.trainer
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return position


class ArrayDataModule(L.LightningDataModule):
    """Train/validation loaders over in-memory or memory-mapped arrays; training resumes mid-epoch."""

    def __init__(self, train, val, batch_size: int, eval_batch_size: int, seed: int = 0):
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed

    def train_dataloader(self) -> EpochBatches:
        return EpochBatches(self.train, batch_size=self.batch_size, seed=self.seed,
                            drop_last=len(self.train) > self.batch_size, position=trainer_position(self))

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.val, batch_size=self.eval_batch_size, shuffle=False)
