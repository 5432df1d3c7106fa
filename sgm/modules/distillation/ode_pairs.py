"""Teacher ODE pairs (noise, x0_teacher) for DMDEngine's optional regression term (DMD1 sec. 3.3).

`generate_ode_pairs` runs a teacher's deterministic sampler from unit noise eps and keeps
(eps, x0_teacher) with the conditioning inputs that produced them. The generator's regression term
starts from x = sqrt(1 + sigma_0^2) * eps at its first sigma, the samplers' convention, so the
teacher's sampler must start at the same sigma (sigma_max) for the pairs to mean the same map.
`ODEPairsDataModule` serves the saved pairs as batches: {"ode_noise", "ode_x0", <condition keys>}, from a
.safetensors file (what scripts/generate_ode_pairs.py writes) or an older torch file (.pt, read with
weights_only=True), in an order that continues exactly after -r.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from sgm.data.resumable import ResumableDataLoader
from sgm.io.checkpoint import read_state_dict
from sgm.util import broadcast_cond_to_rows


@torch.no_grad()
def generate_ode_pairs(
    engine,  # a DiffusionEngine teacher with a deterministic sampler (e.g. Heun/Euler, s_churn 0)
    batches: Iterable[dict],  # batches carrying the conditioning inputs (e.g. the teacher's data)
    num_pairs: int,  # pairs to produce
    condition_keys: list[str],  # batch keys stored with each pair (e.g. ["cls"])
    ucg_keys: list[str] | None = None,  # inputs zeroed for the teacher's uc (default: condition_keys)
) -> dict[str, torch.Tensor]:
    """-> {"ode_noise": (P, ...), "ode_x0": (P, ...), key: (P, ...) for key in condition_keys}."""
    out: dict[str, list[torch.Tensor]] = {"ode_noise": [], "ode_x0": [], **{k: [] for k in condition_keys}}
    made = 0
    for batch in _cycle(batches):
        batch = {k: v.to(engine.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        shape = engine.encode_first_stage(engine.get_input(batch)).shape  # (N, ...)
        c, uc = engine.conditioner.get_unconditional_conditioning(
            batch, force_uc_zero_embeddings=list(ucg_keys if ucg_keys is not None else condition_keys))
        c, uc = broadcast_cond_to_rows(c, shape[0]), broadcast_cond_to_rows(uc, shape[0])
        noise = torch.randn(shape, device=engine.device)

        def denoiser(x, sigma, cond):
            return engine.denoiser(engine.model, x, sigma, cond)

        with engine.ema_scope():
            x0 = engine.sampler(denoiser, noise, c, uc=uc)
        for key, value in (("ode_noise", noise), ("ode_x0", x0), *((k, batch[k]) for k in condition_keys)):
            out[key].append(value.cpu())
        made += shape[0]
        if made >= num_pairs:
            break
    return {k: torch.cat(v)[:num_pairs] for k, v in out.items()}


def _cycle(batches: Iterable[dict]) -> Iterator[dict]:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("generate_ode_pairs: no batches to take conditions from")


class ODEPairsDataset(Dataset):
    def __init__(
        self,
        path: str,  # file written by scripts/generate_ode_pairs.py (.safetensors; .pt from older versions)
    ) -> None:
        self.pairs = read_state_dict(path)  # a dict of tensors; unreadable or non-finite files fail naming it
        self.length = len(self.pairs["ode_noise"])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.pairs.items()}


class ODEPairsDataModule(pl.LightningDataModule):
    def __init__(
        self,
        path: str,  # the pairs file
        batch_size: int = 64,  # pairs per batch
        num_workers: int = 0,  # DataLoader workers
    ) -> None:
        super().__init__()
        self.path = path
        self.batch_size = batch_size
        self.num_workers = num_workers

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = ODEPairsDataset(self.path)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, drop_last=True,
                                   num_workers=self.num_workers)


__all__ = ["ODEPairsDataModule", "ODEPairsDataset", "generate_ode_pairs"]
