"""A cache of the conditioning embeddings of an image folder: the CLIP image embedding and the VAE
latent of the conditioning frames, computed once instead of at every iteration.

    python scripts/cache_conditioning.py --config configs/dmd/dmd_svd.yaml --out cache/first_frames \
        model.params.teacher_ckpt_path=checkpoints/svd.safetensors data.params.folder=data/first_frames

writes `shard_00000.safetensors`, ... and `manifest.json`. A run then swaps its data module for
`CachedImageFolderDataModule` (same parameters as `sgm.data.image_folder.ImageFolderDataModule`, plus
`cache` and `ckpt_path`). Its batches hold what the image folder's hold, and in addition
`<input_key>__cached` for every cached embedder; `GeneralConditioner` uses such an entry in place of
running that embedder (dropout and forced zeros still apply), so the model config is unchanged.

What is cached, per image: the output of the embedder reading `cond_frames_without_noise` (CLIP;
independent of noise) and, for `variants` fixed draws k = 0..K-1, the cond_aug level, and the output of
the embedder reading `cond_frames` (the VAE latent of image + cond_aug * noise). Draw k of image i
comes from a generator seeded with (seed, i, k), so the data module rebuilds exactly the cond_frames
that were encoded; each iteration picks one of the K draws per image instead of fresh noise.

A cache is refused, naming what differs, when it was built for other embedder weights (a SHA-256 of
the checkpoint's tensors under the cached embedders' prefixes), another size, another cond_aug law,
or when the folder's images changed (names, byte sizes, modification times).
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
from torch.utils.data import DataLoader

from sgm.data.image_folder import ImageFolder, ImageFolderDataModule
from sgm.data.micro_conditioning import parse_law
from sgm.data.resumable import ResumableDataLoader, seeded_generator
from sgm.data.video_batch import make_video_batch
from sgm.io.checkpoint import atomic_save_safetensors, atomic_write
from sgm.modules.encoders.modules import CACHED_SUFFIX  # batch key of a cached embedding: <input_key>__cached

CACHE_VERSION = 1
MANIFEST = "manifest.json"
CLEAN_KEY, NOISY_KEY = "cond_frames_without_noise", "cond_frames"


class StaleCacheError(ValueError):
    """A conditioning cache that does not belong to this model, size, law or folder; the message says which."""


def weights_fingerprint(ckpt_path: str, prefixes: list[str]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a .safetensors file's tensors under `prefixes`."""
    from safetensors import safe_open

    if not ckpt_path.endswith(".safetensors"):
        raise StaleCacheError(f"a conditioning cache is tied to a .safetensors weight file; got {ckpt_path} "
                              "(scripts/export_student.py writes one from a run)")
    digest = hashlib.sha256()
    with safe_open(ckpt_path, framework="pt") as weights:
        keys = sorted(k for k in weights.keys() if k.startswith(tuple(prefixes)))
        if not keys:
            raise StaleCacheError(f"{ckpt_path} has no tensors under {prefixes}: not the model the cache is for")
        for key in keys:
            tensor = weights.get_tensor(key).contiguous()
            digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def folder_listing(paths: list[str], folder: str) -> list[list]:
    """[relative path, bytes, mtime_ns] per image: what makes a cache stale when it changes."""
    return [[os.path.relpath(p, folder), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths]


def draw_seed(seed: int, index: int, variant: int) -> int:
    return (seed * 1_000_003 + index) * 1_009 + variant


def noisy_batch(image: torch.Tensor, cond_aug_law, seed: int, index: int, variant: int) -> dict:
    """Draw `variant` of image `index`: an SVD batch of one clip (one frame) with its cond_aug and noise."""
    generator = torch.Generator().manual_seed(draw_seed(seed, index, variant))
    cond_aug = cond_aug_law.sample(1, generator)  # (1,)
    return make_video_batch(image[None], 1, fps_id=None, motion_bucket_id=None, cond_aug=cond_aug,
                            generator=generator)


def cached_embedders(conditioner) -> dict[str, tuple[int, torch.nn.Module]]:
    """{input key: (index, embedder)} of the conditioner's embedders reading the conditioning frames."""
    found = {e.input_key: (i, e) for i, e in enumerate(conditioner.embedders) if e.input_key in (CLEAN_KEY, NOISY_KEY)}
    if not found:
        raise StaleCacheError(f"the conditioner has no embedder reading '{CLEAN_KEY}' or '{NOISY_KEY}'")
    return found


@torch.no_grad()
def build_cache(
    conditioner,  # a built GeneralConditioner with the model's weights
    ckpt_path: str,  # the .safetensors file those weights came from (fingerprinted)
    folder: str,  # conditioning images
    size: tuple[int, int],  # (H, W)
    out: str,  # cache folder
    cond_aug=0.02,  # law of the cond_aug draws (a constant, [lo, hi], {log_normal: [m, s]})
    variants: int = 4,  # K noise draws per image
    seed: int = 0,
    shard_size: int = 256,  # images per shard
    device: str = "cpu",
) -> dict:
    law = parse_law(cond_aug, "cond_aug")
    embedders = cached_embedders(conditioner)
    dataset = ImageFolder(folder, size)
    os.makedirs(out, exist_ok=True)
    shards = []
    for start in range(0, len(dataset), shard_size):
        stop = min(start + shard_size, len(dataset))
        tensors: dict[str, list[torch.Tensor]] = {}
        for index in range(start, stop):
            image = dataset.image(index)  # (3, H, W)
            draws = [noisy_batch(image, law, seed, index, k) for k in range(variants)]
            tensors.setdefault("cond_aug", []).append(torch.cat([d["cond_aug"] for d in draws]))  # (K,)
            for key, (_, embedder) in embedders.items():
                if key == CLEAN_KEY:  # no noise: one embedding per image
                    emb = embedder(draws[0][key].to(device)).cpu()  # (1, ...)
                else:
                    emb = torch.stack([embedder(d[key].to(device)).cpu() for d in draws], dim=1)  # (1, K, ...)
                tensors.setdefault(key, []).append(emb)
        name = f"shard_{len(shards):05d}.safetensors"
        atomic_save_safetensors({k: torch.cat(v) if k != "cond_aug" else torch.stack(v) for k, v in tensors.items()},
                                os.path.join(out, name))
        shards.append({"file": name, "start": start, "stop": stop})
    prefixes = [f"conditioner.embedders.{index}." for index, _ in embedders.values()]
    manifest = {
        "version": CACHE_VERSION,
        "weights": {"file": os.path.basename(ckpt_path), "prefixes": prefixes,
                    "sha256": weights_fingerprint(ckpt_path, prefixes)},
        "embedders": {key: type(e).__name__ for key, (_, e) in embedders.items()},
        "size": list(size),
        "cond_aug": repr(law),
        "variants": variants,
        "seed": seed,
        "folder": os.path.abspath(folder),
        "images": folder_listing(dataset.paths, folder),
        "shards": shards,
    }
    atomic_write(os.path.join(out, MANIFEST), lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return manifest


class ConditioningCache:
    """Reads a cache folder; `check` refuses it for another model, size, law or folder."""

    def __init__(self, path: str):
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(f"no conditioning cache at {path} ({MANIFEST} missing); "
                                    "build one with scripts/cache_conditioning.py")
        with open(manifest_path) as f:
            self.manifest = json.load(f)
        self.path = path
        self._shard: tuple[int, dict] | None = None  # (shard number, tensors) last read

    def check(self, ckpt_path: str, folder: str, size: tuple[int, int], cond_aug_law) -> None:
        m, name = self.manifest, self.path
        if m.get("version") != CACHE_VERSION:
            raise StaleCacheError(f"cache {name}: version {m.get('version')}, this code reads {CACHE_VERSION}")
        if list(size) != m["size"]:
            raise StaleCacheError(f"cache {name} was built at size {m['size']}, the config asks {list(size)}")
        if repr(cond_aug_law) != m["cond_aug"]:
            raise StaleCacheError(f"cache {name} drew cond_aug from {m['cond_aug']}, the config asks {cond_aug_law!r}")
        fingerprint = weights_fingerprint(ckpt_path, m["weights"]["prefixes"])
        if fingerprint != m["weights"]["sha256"]:
            raise StaleCacheError(f"cache {name} was built with other embedder weights ({m['weights']['file']}, "
                                  f"{', '.join(m['weights']['prefixes'])}) than {ckpt_path}")
        listing = {row[0]: row[1:] for row in folder_listing(ImageFolder(folder, size).paths, folder)}
        cached = {row[0]: row[1:] for row in m["images"]}
        if listing != cached:
            changed = sorted(set(listing) ^ set(cached)) + sorted(k for k in set(listing) & set(cached)
                                                                 if listing[k] != cached[k])
            raise StaleCacheError(f"cache {name} is stale: images under {folder} changed since it was built "
                                  f"({len(changed)}: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''})")

    def item(self, index: int, variant: int) -> dict[str, torch.Tensor]:
        """Cached tensors of image `index`, draw `variant`: cond_aug (1,) and one embedding per input key."""
        from safetensors.torch import load_file

        number = next(n for n, s in enumerate(self.manifest["shards"]) if s["start"] <= index < s["stop"])
        if self._shard is None or self._shard[0] != number:
            self._shard = (number, load_file(os.path.join(self.path, self.manifest["shards"][number]["file"])))
        tensors, row = self._shard[1], index - self.manifest["shards"][number]["start"]
        out = {"cond_aug": tensors["cond_aug"][row, variant:variant + 1]}
        for key in self.manifest["embedders"]:
            out[key] = tensors[key][row:row + 1] if key == CLEAN_KEY else tensors[key][row:row + 1, variant]
        return out


class CachedFirstFrames(ImageFolder):
    """Item (index, seed) -> the image's draw `seed % K`: its batch (cond_frames rebuilt exactly) + cache."""

    def __init__(self, folder: str, size: tuple[int, int], cache: ConditioningCache, cond_aug_law):
        super().__init__(folder, size)
        self.cache, self.cond_aug_law = cache, cond_aug_law
        self.variants, self.seed = cache.manifest["variants"], cache.manifest["seed"]

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        variant = seed % self.variants
        batch = noisy_batch(self.image(index), self.cond_aug_law, self.seed, index, variant)
        cached = self.cache.item(index, variant)
        torch.testing.assert_close(batch["cond_aug"], cached["cond_aug"], rtol=0, atol=0)
        return {"image": batch[CLEAN_KEY][0], "noisy": batch[NOISY_KEY][0], "cond_aug": float(batch["cond_aug"][0]),
                "seed": seed, **{key + CACHED_SUFFIX: cached[key][0] for key in self.cache.manifest["embedders"]}}


class CachedCollate:
    def __init__(self, num_frames: int, fps_id, motion_bucket_id):
        self.num_frames = num_frames
        self.fps_id = parse_law(fps_id, "fps_id", integer=True)
        self.motion_bucket_id = parse_law(motion_bucket_id, "motion_bucket_id", integer=True)

    def __call__(self, items: list[dict]) -> dict:
        clips = len(items)
        generator = seeded_generator(item["seed"] for item in items)
        batch = make_video_batch(torch.stack([item["image"] for item in items]), self.num_frames,
                                 fps_id=self.fps_id.sample(clips, generator),
                                 motion_bucket_id=self.motion_bucket_id.sample(clips, generator),
                                 cond_aug=torch.tensor([item["cond_aug"] for item in items]), generator=generator)
        batch[NOISY_KEY] = torch.stack([item["noisy"] for item in items])  # the frames that were encoded
        for key in items[0]:
            if key.endswith(CACHED_SUFFIX):
                batch[key] = torch.stack([item[key] for item in items])
        return batch


class CachedImageFolderDataModule(ImageFolderDataModule):
    """ImageFolderDataModule whose batches also carry the cached embeddings (see the module docstring)."""

    def __init__(
        self,
        cache: str,  # folder written by scripts/cache_conditioning.py
        ckpt_path: str,  # the model's .safetensors weights (checked against the cache's fingerprint)
        folder: str,  # the images the cache was built from
        size: list[int],  # [H, W]
        num_frames: int = 14,
        batch_size: int = 1,
        fps_id=6,  # a constant or [lo, hi] per clip (not cached: cheap)
        motion_bucket_id=127,  # a constant or [lo, hi] per clip
        cond_aug=0.02,  # must be the law the cache was built with
        num_workers: int = 0,
        seed: int = 0,  # the order of images and the choice of draws, per epoch
    ):
        super().__init__(folder, size, num_frames, batch_size, fps_id, motion_bucket_id, cond_aug, num_workers)
        self.cache_path, self.ckpt_path, self.seed = cache, ckpt_path, seed
        self.cond_aug_law = parse_law(cond_aug, "cond_aug")
        self.collate = CachedCollate(num_frames, fps_id, motion_bucket_id)

    def setup(self, stage: str | None = None) -> None:
        cache = ConditioningCache(self.cache_path)
        size = (int(self.size[0]), int(self.size[1]))
        cache.check(self.ckpt_path, self.folder, size, self.cond_aug_law)
        self.train_dataset = CachedFirstFrames(self.folder, size, cache, self.cond_aug_law)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(  # the same batches after -r as in an uninterrupted run
            self.train_dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, seed=self.seed,
            item_seeds=True, num_workers=self.num_workers, collate_fn=self.collate,
            persistent_workers=self.num_workers > 0)


__all__ = ["CACHED_SUFFIX", "CachedImageFolderDataModule", "ConditioningCache", "StaleCacheError", "build_cache",
           "weights_fingerprint"]
