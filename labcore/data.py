"""Batches from in-memory or memory-mapped arrays without per-item Python overhead.

`DataLoader(ArrayBatches(...), batch_size=None, sampler=BatchSampler(...))` indexes the array
once per batch (a list of row indices), instead of once per row and collating thousands of rows.
"""

from __future__ import annotations

from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


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


def batch_loader(*arrays, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False) -> DataLoader:
    ds = ArrayBatches(*arrays)
    if shuffle:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(ds)
    return DataLoader(ds, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=drop_last))



class ArrayDataModule(L.LightningDataModule):
    """Train/validation loaders over in-memory or memory-mapped arrays."""

    def __init__(self, train, val, batch_size: int, eval_batch_size: int, seed: int = 0):
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.train, batch_size=self.batch_size, shuffle=True, seed=self.seed,
                            drop_last=len(self.train) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.val, batch_size=self.eval_batch_size, shuffle=False)
