"""A training DataLoader whose batches are a function of (seed, epoch, rank) and that continues inside
an epoch after `-r`, so a resumed run sees the batches the uninterrupted run saw.

Lightning saves `state_dict()` of a loader that has one (in the checkpoint's loop state) and calls
`load_state_dict()` before the first batch of a resumed run. A plain shuffled DataLoader restarts
the epoch with a new order drawn from the global RNG instead.

Data with random draws of its own (fresh trajectories, clip starts, micro-conditioning laws, the noise on
cond_frames) asks for `item_seeds=True`: the dataset is then indexed with (index, seed) pairs, the seed a
function of (seed, epoch, index) (`item_seeds`), and every draw of the item, and of the batch that
`seeded_generator` makes from its items' seeds, comes from it. Such draws are the same after `-r`, on any
rank and with any number of workers, instead of following the global RNG's state at fetch time.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def item_seeds(seed: int, epoch: int, size: int) -> list[int]:
    """One 62-bit seed per dataset index for pass `epoch`, a function of (seed, epoch, index) only."""
    return np.random.default_rng([seed, epoch]).integers(0, 2**62, size=size).tolist()


def seeded_generator(seeds: Iterable[int | None]) -> torch.Generator | None:
    """A generator for the draws of a whole batch (e.g. in a collate), seeded from its items' seeds;
    None (torch's global RNG, which the caller seeds) when an item came without one (a plain index)."""
    seeds = list(seeds)
    if any(s is None for s in seeds):
        return None
    return torch.Generator().manual_seed(sum(int(s) for s in seeds) % 2**63)


class ResumableSampler(DistributedSampler):
    """The epoch's order is the permutation seeded by seed + epoch (DistributedSampler's rule), this
    rank's share of it; `start` items of the share are skipped once (a resumed epoch). Being a
    DistributedSampler, Lightning neither replaces nor wraps it under DDP. With `item_seeds` it yields
    (index, seed) pairs (see the module docstring).

    The sampler counts its own epochs (one per pass) and ignores Lightning's `set_epoch`: a run stopped
    by max_steps is saved as if its epoch had ended, so after `-r` Lightning's epoch counter is one
    ahead of the data the uninterrupted run would see.
    """

    def __init__(
        self,
        dataset: Dataset,
        shuffle: bool = True,  # permute every epoch
        seed: int = 0,  # order seed (the same on every rank)
        drop_last: bool = True,  # equal shares per rank without repeating items
        item_seeds: bool = False,  # yield (index, seed) pairs instead of indices
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if distributed else 1,
                         rank=dist.get_rank() if distributed else 0, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0  # items of this rank's share already consumed in the current epoch
        self.item_seeds = item_seeds

    def set_epoch(self, epoch: int) -> None:
        """Ignored (see the class doc); the epoch advances with every pass."""

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start:]
        items = indices
        if self.item_seeds:
            seeds = item_seeds(self.seed, self.epoch, len(self.dataset))
            items = [(i, seeds[i]) for i in indices]
        self.start = 0
        self.epoch += 1  # the next pass
        return iter(items)


class ResumableDataLoader(DataLoader):
    """DataLoader over a ResumableSampler that counts the batches it has handed out this epoch."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,  # items per batch and rank
        shuffle: bool = True,  # permute every epoch
        seed: int | None = None,  # order seed; None: the run's seed (main.py -s, via PL_GLOBAL_SEED)
        drop_last: bool = True,  # no short last batch
        item_seeds: bool = False,  # index the dataset with (index, seed) pairs (module docstring)
        **kwargs: Any,  # DataLoader's other arguments (num_workers, persistent_workers, ...)
    ) -> None:
        if kwargs.get("sampler") is not None:  # Lightning re-instantiating it with its own sampler
            raise ValueError("ResumableDataLoader brings its own sampler")
        kwargs.pop("sampler", None)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         sampler=ResumableSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                                 item_seeds=item_seeds), **kwargs)
        self.epoch_in_progress = 0  # the pass the batches come from
        self.batches_in_epoch = 0  # batches handed out in that pass

    def __iter__(self) -> Iterator[Any]:
        self.epoch_in_progress = self.sampler.epoch
        self.batches_in_epoch = self.sampler.start // self.batch_size
        for batch in super().__iter__():
            self.batches_in_epoch += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch_in_progress), "batches": int(self.batches_in_epoch)}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # that pass had ended: start the next one
            epoch, batches = epoch + 1, 0
        self.sampler.epoch, self.sampler.start = epoch, batches * self.batch_size
        self.epoch_in_progress, self.batches_in_epoch = epoch, batches
