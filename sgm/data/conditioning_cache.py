"""A cache of what the frozen encoders make of a run's data: the CLIP image embedding and the VAE latent of
the conditioning frames and, optionally, the VAE latents of the target clips, computed once instead of at
every iteration. For an image folder (data-free DMD) or a video folder (fine-tuning, DMD with real clips):

    python scripts/cache_conditioning.py --config configs/dmd/dmd_svd.yaml --out cache/first_frames \
        model.params.teacher_ckpt_path=checkpoints/svd.safetensors data.params.folder=data/first_frames
    python scripts/cache_conditioning.py --config configs/example_training/svd_finetune.yaml \
        --out cache/videos --latents data.params.folder=data/videos

write `shard_00000.safetensors`, ... and `manifest.json`. A run then swaps its data module for
`CachedImageFolderDataModule` / `CachedVideoFolderDataModule` (the parameters of
`sgm.data.image_folder.ImageFolderDataModule` / `sgm.data.video_folder.VideoFolderDataModule`, plus `cache`
and `ckpt_path`). Its batches hold what the folder's hold, and in addition `<input_key>__cached` for every
cached embedder and, with `--latents`, `<model input_key>__cached` (the first stage's unscaled encoding of
the target frames, ((b t), C, h, w)). `GeneralConditioner` uses such an entry in place of running that
embedder (dropout and forced zeros still apply) and `DiffusionEngine.input_latents` in place of the VAE
encoder, so the model config is unchanged.

What is cached: `variants` fixed draws k = 0..K-1 per image or video, each drawn from a generator seeded
with (seed, index, k). For an image a draw is a cond_aug level and its noise; for a video it is a whole
item of `VideoClips` (clip start, micro-conditioning laws, cond_aug) and the noise. Per draw: cond_aug, the
output of the embedder reading `cond_frames` (the VAE latent of frame 0 + cond_aug * noise) and, for videos,
the output of the embedder reading `cond_frames_without_noise` (CLIP of the clip's first frame; an image has
one per image) and the target latents (a first stage that samples its posterior, as SVD's does, gives one
sample per draw, seeded by it, where the live path draws a new one every iteration). Each iteration takes draw `item seed % K` of an item instead of fresh
draws (`sgm.data.resumable`: the same after `-r`), and the data module rebuilds exactly the frames that were
encoded. A video thus contributes K fixed clips, not a fresh clip start per epoch: raise `--variants` for
long videos. Motion buckets from optical flow are still computed from the clip's frames.

A cache is refused, naming what differs, when it was built for other weights (a SHA-256 of the
checkpoint's tensors under the cached embedders' prefixes, and `first_stage_model.` with latents), another
size, frame count, frame stride or law of the draws, or when the folder's files changed (names, byte sizes,
modification times; a folder of frames by the sum and the latest of its frames').

Precision: the cache runs the encoders in fp32, one clip at a time. On CPU in fp32 the cached tensors equal
the live encoders' on the same rows bit for bit (tests/test_conditioning_cache.py); a live batch of several
clips may differ from them in the last bits (matmul blocking depends on the batch size), and a live run
under bf16 autocast differs by bf16 rounding (the cache is the more precise).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import torch
from torch.utils.data import DataLoader

from sgm.data.image_folder import ImageFolder, ImageFolderDataModule
from sgm.data.micro_conditioning import MOTION_BUCKET_SCALE, parse_law
from sgm.data.resumable import ResumableDataLoader, seeded_generator
from sgm.data.video_batch import make_video_batch
from sgm.data.video_folder import (ClipCollate, VideoClips, VideoFolderDataModule, VideoSource, frame_files,
                                   list_videos, with_motion_buckets)
from sgm.io.checkpoint import atomic_save_safetensors, atomic_write
from sgm.modules.encoders.modules import CACHED_SUFFIX  # batch key of a cached embedding: <input_key>__cached

CACHE_VERSION = 2
MANIFEST = "manifest.json"
CLEAN_KEY, NOISY_KEY = "cond_frames_without_noise", "cond_frames"
LATENTS = "latents"  # cache key of the target clips' first-stage latents
FIRST_STAGE_PREFIX = "first_stage_model."


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
    """[relative path, bytes, mtime_ns] per file or folder of frames: what makes a cache stale when it changes."""
    rows = []
    for path in paths:
        files = frame_files(path) if os.path.isdir(path) else [path]
        stats = [os.stat(f) for f in files]
        rows.append([os.path.relpath(path, folder), sum(s.st_size for s in stats),
                     max([s.st_mtime_ns for s in stats] + [os.stat(path).st_mtime_ns])])
    return rows


def draw_seed(seed: int, index: int, variant: int) -> int:
    return (seed * 1_000_003 + index) * 1_009 + variant


def noisy_batch(image: torch.Tensor, cond_aug, generator: torch.Generator) -> dict:
    """An SVD batch of one clip (one frame) of `image` (3, H, W): cond_aug (a law or a level) and its noise."""
    level = cond_aug.sample(1, generator) if hasattr(cond_aug, "sample") else torch.tensor([float(cond_aug)])  # (1,)
    return make_video_batch(image[None], 1, fps_id=None, motion_bucket_id=None, cond_aug=level, generator=generator)


def image_draw(dataset: ImageFolder, cond_aug_law, seed: int, index: int, variant: int) -> dict:
    """Draw `variant` of image `index`: image, noise-augmented image and cond_aug."""
    batch = noisy_batch(dataset.image(index), cond_aug_law, torch.Generator().manual_seed(draw_seed(seed, index, variant)))
    return {"image": batch[CLEAN_KEY][0], "noisy": batch[NOISY_KEY][0], "cond_aug": float(batch["cond_aug"][0])}


def video_draw(clips: VideoClips, seed: int, index: int, variant: int) -> dict:
    """Draw `variant` of video `index`: the VideoClips item of the draw's seed and its noise-augmented first frame."""
    item_seed = draw_seed(seed, index, variant)
    item = clips.exact_item(index, item_seed)  # clip start, micro-conditioning and cond_aug from item_seed
    noise = torch.Generator().manual_seed((item_seed + 1) % 2**63)  # its own stream for the cond_frames noise
    return {**item, "noisy": noisy_batch(item["video"][0], item["cond_aug"], noise)[NOISY_KEY][0]}


def cached_embedders(conditioner) -> dict[str, tuple[int, torch.nn.Module]]:
    """{input key: (index, embedder)} of the conditioner's embedders reading the conditioning frames."""
    found = {e.input_key: (i, e) for i, e in enumerate(conditioner.embedders) if e.input_key in (CLEAN_KEY, NOISY_KEY)}
    if not found:
        raise StaleCacheError(f"the conditioner has no embedder reading '{CLEAN_KEY}' or '{NOISY_KEY}'")
    return found


# ------------------------------------------------------------------------------------------- writing
def write_shards(count: int, item: Callable[[int], dict[str, torch.Tensor]], out: str, shard_size: int) -> list[dict]:
    """Items 0..count-1 ({key: tensor}) stacked into shards of `shard_size`; -> the manifest's shard list."""
    os.makedirs(out, exist_ok=True)
    shards = []
    for start in range(0, count, shard_size):
        stop = min(start + shard_size, count)
        items = [item(index) for index in range(start, stop)]
        name = f"shard_{len(shards):05d}.safetensors"
        atomic_save_safetensors({key: torch.stack([i[key] for i in items]) for key in items[0]}, os.path.join(out, name))
        shards.append({"file": name, "start": start, "stop": stop})
    return shards


def write_manifest(out: str, kind: str, ckpt_path: str, prefixes: list[str], embedders: dict, per_draw: list[str],
                   data: dict, variants: int, seed: int, folder: str, files: list[list], shards: list[dict],
                   **extra) -> dict:
    manifest = {
        "version": CACHE_VERSION,
        "kind": kind,  # images | videos
        "weights": {"file": os.path.basename(ckpt_path), "prefixes": prefixes,
                    "sha256": weights_fingerprint(ckpt_path, prefixes)},
        "embedders": {key: type(e).__name__ for key, (_, e) in embedders.items()},
        "per_draw": per_draw,  # keys stored per draw (K, rows, ...); the others once per item (rows, ...)
        "data": data,  # what the draws depend on, checked against the config
        "variants": variants,
        "seed": seed,
        "folder": os.path.abspath(folder),
        "files": files,
        "shards": shards,
        **extra,
    }
    atomic_write(os.path.join(out, MANIFEST), lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return manifest


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
    """The cache of an image folder (data-free runs): CLIP once per image, the noisy frame's latent per draw."""
    law = parse_law(cond_aug, "cond_aug")
    embedders = cached_embedders(conditioner)
    dataset = ImageFolder(folder, size)

    def item(index: int) -> dict[str, torch.Tensor]:
        draws = [image_draw(dataset, law, seed, index, k) for k in range(variants)]
        out = {"cond_aug": torch.tensor([d["cond_aug"] for d in draws])}  # (K,)
        for key, (_, embedder) in embedders.items():
            if key == CLEAN_KEY:  # no noise: one embedding per image
                out[key] = embedder(draws[0]["image"][None].to(device)).cpu()  # (1, ...)
            else:
                out[key] = torch.stack([embedder(d["noisy"][None].to(device)).cpu() for d in draws])  # (K, 1, ...)
        return out

    shards = write_shards(len(dataset), item, out, shard_size)
    return write_manifest(out, "images", ckpt_path, embedder_prefixes(embedders), embedders, [NOISY_KEY],
                          image_fields(size, law), variants, seed, folder, folder_listing(dataset.paths, folder),
                          shards)


@torch.no_grad()
def build_video_cache(
    conditioner,  # a built GeneralConditioner with the model's weights
    ckpt_path: str,  # the .safetensors file those weights came from (fingerprinted)
    clips: VideoClips,  # the video folder's clips (VideoFolderDataModule.train_dataset after setup)
    folder: str,  # the video folder
    out: str,  # cache folder
    first_stage: torch.nn.Module | None = None,  # with it, also the target clips' latents (first_stage.encode)
    variants: int = 4,  # K draws (clip, micro-conditioning, cond_aug, noise) per video
    seed: int = 0,
    shard_size: int = 16,  # videos per shard
    device: str = "cpu",
) -> dict:
    """The cache of a video folder (fine-tuning, DMD on real clips): per draw, CLIP of the clip's first frame,
    the latent of its noise-augmented first frame and, with `first_stage`, the clip's latents."""
    embedders = cached_embedders(conditioner)

    def item(index: int) -> dict[str, torch.Tensor]:
        draws = [video_draw(clips, seed, index, k) for k in range(variants)]
        out = {"cond_aug": torch.tensor([d["cond_aug"] for d in draws])}  # (K,)
        for key, (_, embedder) in embedders.items():
            frame = "video" if key == CLEAN_KEY else "noisy"
            out[key] = torch.stack([embedder(first(d[frame]).to(device)).cpu() for d in draws])  # (K, 1, ...)
        if first_stage is not None:  # (K, t, C, h, w), unscaled: the engine applies its scale_factor
            out[LATENTS] = torch.stack([seeded_encode(first_stage, d["video"].to(device), d["seed"]).cpu()
                                        for d in draws])
        return out

    shards = write_shards(len(clips), item, out, shard_size)
    prefixes = embedder_prefixes(embedders) + ([FIRST_STAGE_PREFIX] if first_stage is not None else [])
    sources = [[os.path.relpath(s.path, folder), s.num_frames, s.fps] for s in clips.sources]
    return write_manifest(out, "videos", ckpt_path, prefixes, embedders, [CLEAN_KEY, NOISY_KEY]
                          + ([LATENTS] if first_stage is not None else []), video_fields(clips), variants, seed,
                          folder, folder_listing(list_videos(folder), folder), shards, sources=sources,
                          latents=first_stage is not None)


def seeded_encode(first_stage: torch.nn.Module, frames: torch.Tensor, seed: int) -> torch.Tensor:
    """first_stage.encode(frames) with torch's RNG seeded by `seed` (restored after): a first stage that samples
    its posterior (SVD's DiagonalGaussianRegularizer) gives the same latents for a draw on every build."""
    devices = [frames.device.index or 0] if frames.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((seed + 2) % 2**63)
        return first_stage.encode(frames)


def first(frames: torch.Tensor) -> torch.Tensor:
    """(t, 3, H, W) clip or (3, H, W) frame -> (1, 3, H, W): its first frame as a one-clip batch."""
    return frames[:1] if frames.ndim == 4 else frames[None]


def embedder_prefixes(embedders: dict) -> list[str]:
    return [f"conditioner.embedders.{index}." for index, _ in embedders.values()]


def image_fields(size, cond_aug_law) -> dict:
    """What an image cache's draws depend on (checked against the config)."""
    return {"size": [int(size[0]), int(size[1])], "cond_aug": repr(cond_aug_law)}


def video_fields(clips: VideoClips) -> dict:
    """What a video cache's draws depend on: the clip shape and every law drawn from an item's seed."""
    return {"size": list(clips.size), "num_frames": clips.num_frames, "frame_stride": clips.frame_stride,
            "fps_id": repr(clips.fps_law) if clips.fps_law is not None else f"from the video (frames_fps "
                                                                            f"{clips.frames_fps})",
            "motion_bucket_id": repr(clips.motion_law) if clips.motion_law is not None else clips.motion_mode,
            "cond_aug": repr(clips.cond_aug_law)}


# ------------------------------------------------------------------------------------------- reading
FIELD_MESSAGES = {"size": "was built at size {cached}, the config asks {asked}",
                  "cond_aug": "drew cond_aug from {cached}, the config asks {asked}"}


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

    def check(self, kind: str, ckpt_path: str, folder: str, fields: dict, files: list[list]) -> None:
        """Refuse (StaleCacheError, naming the difference) a cache of another kind, weights, data or folder."""
        m, name = self.manifest, self.path
        if m.get("version") != CACHE_VERSION:
            raise StaleCacheError(f"cache {name}: version {m.get('version')}, this code reads {CACHE_VERSION}; "
                                  "rebuild it with scripts/cache_conditioning.py")
        if m["kind"] != kind:
            raise StaleCacheError(f"cache {name} holds {m['kind']}, this data module reads {kind}")
        for field, asked in fields.items():
            cached = m["data"].get(field)
            if cached != asked:
                template = FIELD_MESSAGES.get(field, "was built with " + field + " {cached}, the config asks {asked}")
                raise StaleCacheError(f"cache {name} " + template.format(cached=cached, asked=asked))
        fingerprint = weights_fingerprint(ckpt_path, m["weights"]["prefixes"])
        if fingerprint != m["weights"]["sha256"]:
            what = "embedder and first-stage" if FIRST_STAGE_PREFIX in m["weights"]["prefixes"] else "embedder"
            raise StaleCacheError(f"cache {name} was built with other {what} weights ({m['weights']['file']}, "
                                  f"{', '.join(m['weights']['prefixes'])}) than {ckpt_path}")
        listing, cached = ({row[0]: row[1:] for row in rows} for rows in (files, m["files"]))
        if listing != cached:
            changed = sorted(set(listing) ^ set(cached)) + sorted(k for k in set(listing) & set(cached)
                                                                 if listing[k] != cached[k])
            raise StaleCacheError(f"cache {name} is stale: {kind} under {folder} changed since it was built "
                                  f"({len(changed)}: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''})")

    def keys(self) -> list[str]:
        return list(self.manifest["embedders"]) + ([LATENTS] if self.manifest.get("latents") else [])

    def item(self, index: int, variant: int) -> dict[str, torch.Tensor]:
        """Cached tensors of item `index`, draw `variant`: cond_aug (1,) and, per cached key, the clip's rows."""
        from safetensors.torch import load_file

        number = next(n for n, s in enumerate(self.manifest["shards"]) if s["start"] <= index < s["stop"])
        if self._shard is None or self._shard[0] != number:
            self._shard = (number, load_file(os.path.join(self.path, self.manifest["shards"][number]["file"])))
        tensors, row = self._shard[1], index - self.manifest["shards"][number]["start"]
        out = {"cond_aug": tensors["cond_aug"][row, variant:variant + 1]}
        for key in self.keys():
            out[key] = tensors[key][row, variant] if key in self.manifest["per_draw"] else tensors[key][row]
        return out


def cached_entries(cache: ConditioningCache, index: int, variant: int, cond_aug: float, names: dict) -> dict:
    """The batch entries of a cached draw, {names[key]: rows}; its cond_aug must be the one rebuilt."""
    cached = cache.item(index, variant)
    if float(cached["cond_aug"][0]) != cond_aug:
        raise StaleCacheError(f"cache {cache.path}: item {index} draw {variant} has cond_aug "
                              f"{float(cached['cond_aug'][0])}, the data rebuilt {cond_aug}")
    return {names[key]: cached[key] for key in cache.keys()}


def with_cached(batch: dict, items: list[dict]) -> dict:
    """The collated batch with the encoded (noise-augmented) frames and the cached rows of its items."""
    batch[NOISY_KEY] = torch.stack([item["noisy"] for item in items])  # (b, 3, H, W): the frames that were encoded
    for key in items[0]:
        if key.endswith(CACHED_SUFFIX):
            batch[key] = torch.cat([item[key] for item in items])  # (b rows, ...)
    return batch


# ------------------------------------------------------------------------------------------- images
class CachedFirstFrames(ImageFolder):
    """Item (index, seed) -> the image's draw `seed % K`: its batch (cond_frames rebuilt exactly) + cache."""

    def __init__(self, folder: str, size: tuple[int, int], cache: ConditioningCache, cond_aug_law):
        super().__init__(folder, size)
        self.cache, self.cond_aug_law = cache, cond_aug_law
        self.variants, self.seed = cache.manifest["variants"], cache.manifest["seed"]

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        draw = image_draw(self, self.cond_aug_law, self.seed, index, seed % self.variants)
        names = {key: key + CACHED_SUFFIX for key in self.cache.keys()}
        return {**draw, "seed": seed, **cached_entries(self.cache, index, seed % self.variants, draw["cond_aug"], names)}


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
        return with_cached(batch, items)


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
        dataset = CachedFirstFrames(self.folder, size, cache, self.cond_aug_law)
        cache.check("images", self.ckpt_path, self.folder, image_fields(size, self.cond_aug_law),
                    folder_listing(dataset.paths, self.folder))
        self.train_dataset = dataset

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(  # the same batches after -r as in an uninterrupted run
            self.train_dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, seed=self.seed,
            item_seeds=True, num_workers=self.num_workers, collate_fn=self.collate,
            persistent_workers=self.num_workers > 0)


# ------------------------------------------------------------------------------------------- videos
class CachedVideoClips(VideoClips):
    """Item (index, seed) -> draw `seed % K` of video `index` (clip, micro-conditioning, cond_frames rebuilt
    exactly, as `video_draw` drew it for the cache) + its cached rows."""

    def __init__(self, cache: ConditioningCache, latents_key: str, *args, **kwargs):
        super().__init__(*args, **kwargs)  # VideoClips' arguments
        self.cache, self.variants, self.seed = cache, cache.manifest["variants"], cache.manifest["seed"]
        self.names = {key: key + CACHED_SUFFIX for key in cache.manifest["embedders"]} | {LATENTS: latents_key}

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        variant = seed % self.variants
        draw = video_draw(self, self.seed, index, variant)
        return {**draw, "seed": seed, **cached_entries(self.cache, index, variant, draw["cond_aug"], self.names)}


class CachedClipCollate(ClipCollate):
    def __call__(self, items: list[dict]) -> dict:
        return with_cached(super().__call__(items), items)


class CachedVideoFolderDataModule(VideoFolderDataModule):
    """VideoFolderDataModule whose batches also carry the cached embeddings and, when the cache has them, the
    target latents `<input_key>__cached` (see the module docstring). The folder is not probed again: the
    cache's manifest lists its videos, and any change to them refuses the cache."""

    def __init__(
        self,
        cache: str,  # folder written by scripts/cache_conditioning.py
        ckpt_path: str,  # the model's .safetensors weights (checked against the cache's fingerprint)
        folder: str,  # the videos the cache was built from
        size: list[int],  # [H, W]; this and the draws' parameters must be those the cache was built with
        num_frames: int = 14,
        frame_stride: int = 1,
        batch_size: int = 1,
        fps_id=None,
        frames_fps: float | None = None,
        motion_bucket_id="flow",
        motion_bucket_scale: float = MOTION_BUCKET_SCALE,  # not cached: flow buckets come from the clip's frames
        cond_aug=None,
        input_key: str = "frames",  # batch key of the target frames (the model's input_key)
        num_workers: int = 0,
        seed: int = 0,  # the order of clips and the choice of draws, per epoch
    ):
        super().__init__(folder, size, num_frames, frame_stride, batch_size, fps_id, frames_fps, motion_bucket_id,
                         motion_bucket_scale, cond_aug, input_key, num_workers, seed)
        self.cache_path, self.ckpt_path = cache, ckpt_path
        self.collate = CachedClipCollate(self.input_key)

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_dataset"):
            return
        cache = ConditioningCache(self.cache_path)
        shape = (self.size, self.num_frames, self.frame_stride)
        cache.check("videos", self.ckpt_path, self.folder, video_fields(VideoClips([], *shape, **self.clip_kwargs)),
                    folder_listing(list_videos(self.folder), self.folder))
        sources = [VideoSource(os.path.join(self.folder, rel), count, fps) for rel, count, fps in cache.manifest["sources"]]
        if self.clip_kwargs["motion_bucket_id"] == "file":
            sources = with_motion_buckets(sources, self.folder)
        self.train_dataset = CachedVideoClips(cache, self.input_key + CACHED_SUFFIX, sources, *shape, **self.clip_kwargs)


__all__ = ["CACHED_SUFFIX", "CachedImageFolderDataModule", "CachedVideoFolderDataModule", "ConditioningCache",
           "StaleCacheError", "build_cache", "build_video_cache", "weights_fingerprint"]
