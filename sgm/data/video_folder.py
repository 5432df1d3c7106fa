"""Users' own videos as SVD image-to-video training clips.

A folder, searched recursively, of video files (mp4, webm, mov, mkv, avi, gif) and/or folders of
frames (a folder holding images is one video, its frames in file-name order). Each item is one clip
of `num_frames` frames taken every `frame_stride` frames from a random start, resized (shorter side)
and centre-cropped to `size`, in [-1, 1]; its first frame is the conditioning image. A batch goes
through `sgm.data.video_batch.make_video_batch` and carries

    frames ((b t), 3, H, W), cond_frames_without_noise (b, 3, H, W), cond_frames (b, 3, H, W),
    fps_id / motion_bucket_id / cond_aug ((b t),), num_video_frames t, image_only_indicator (b, t)

Micro-conditioning per clip (facts and rules in `sgm.data.micro_conditioning`):
    fps_id            null: from the video, round(container fps / frame_stride) - 1 (SVD's fps - 1
                      convention); folders of frames have no container fps and use `frames_fps`.
                      Or a law: a constant or [lo, hi].
    motion_bucket_id  "flow": from the clip's mean Farneback optical flow (needs opencv), mapped onto
                      0..255 by `motion_bucket_from_flow` with `motion_bucket_scale`; "file": your own
                      values, {relative path: motion_bucket_id} in <folder>/motion_buckets.json; or a law.
    cond_aug          a law; default log-normal, log(cond_aug) ~ N(-3.0, 0.5^2) as in public SVD fine-tuning.

Decoding: PyAV for videos when installed (`av`, in requirements: 2.3x faster than imageio's ffmpeg reader
per 14-frame 576x1024 clip, scripts/bench/video_decode.py), else imageio-ffmpeg; headers (fps, frame count)
through imageio-ffmpeg; Pillow for GIFs and frames.
`setup()` probes every file once (every frame's header in a folder of frames): unreadable files, folders
holding a frame that is not an image (a text file named .png), and files shorter than one clip
((num_frames - 1) * frame_stride + 1 frames) are skipped, counted and named in one warning; a folder
with no usable video is one error. A file that fails later (e.g. truncated in the middle) is replaced
by the next video and named once in a warning; an epoch never stops on it.

Randomness: the loader (`sgm.data.resumable.ResumableDataLoader(item_seeds=True)`) hands every item an
integer seed drawn from (seed, epoch, index), and all of the item's draws (clip start, cond_aug, the noise
on cond_frames) come from a generator seeded with it. Batches are therefore the same whatever
num_workers is and after a resume (`-r`) as in an uninterrupted run, and each epoch draws new clips.

    data:
      target: sgm.data.video_folder.VideoFolderDataModule
      params: {folder: data/videos, size: [576, 1024], num_frames: 14, frame_stride: 4,
               motion_bucket_id: flow, batch_size: 1, num_workers: 4}
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sgm.data.micro_conditioning import (
    MOTION_BUCKET_SCALE, SVD_COND_AUG_LOG_NORMAL, fps_id_from_fps, mean_flow_percent, motion_bucket_from_flow,
    parse_law)
from sgm.data.resumable import ResumableDataLoader, seeded_generator
from sgm.data.video_batch import make_video_batch

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
GIF_EXTENSIONS = (".gif",)
MOTION_BUCKETS_FILE = "motion_buckets.json"  # motion_bucket_id: file -> {relative path: value}
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class VideoSource:
    path: str  # a video file or a folder of frames
    num_frames: int  # frames in the video
    fps: float | None  # container frame rate (None: unknown, folders of frames)
    motion_bucket_id: float | None = None  # given in motion_buckets.json (motion_bucket_id: file)


# ------------------------------------------------------------------------------------------ files
def list_videos(folder: str) -> list[str]:
    """Video files and folders of frames under `folder` (recursively), sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"video folder not found: {folder}")
    found = []
    for root, _, names in os.walk(folder):
        lower = [name.lower() for name in names]
        found += [os.path.join(root, n) for n, low in zip(names, lower) if low.endswith(VIDEO_EXTENSIONS + GIF_EXTENSIONS)]
        if any(low.endswith(FRAME_EXTENSIONS) for low in lower):
            found.append(root)
    return sorted(found)


def frame_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTENSIONS))


def probe(path: str) -> VideoSource:
    """Frame count and frame rate of one video; raises (any error) when it cannot be read."""
    if os.path.isdir(path):
        from PIL import Image

        files = frame_files(path)
        for file in files:  # headers only: a text file named .png fails here, not at a random step
            try:
                with Image.open(file):
                    pass
            except Exception as error:
                raise ValueError(f"frame {file} is not an image ({type(error).__name__})") from None
        return VideoSource(path, len(files), None)
    if path.lower().endswith(GIF_EXTENSIONS):
        import imageio.v3 as iio

        properties = iio.improps(path, index=None, plugin="pillow")  # shape (t, H, W, C)
        duration_ms = iio.immeta(path, index=0, plugin="pillow").get("duration") or 0
        return VideoSource(path, int(properties.shape[0]), 1000.0 / duration_ms if duration_ms > 0 else None)
    import imageio.v2 as iio2

    with iio2.get_reader(path, "ffmpeg") as reader:
        fps = float(reader.get_meta_data()["fps"])
        count = int(reader.count_frames())
    return VideoSource(path, count, fps)


def read_frames(path: str, indices: list[int]) -> np.ndarray:
    """Frames `indices` of a video or folder of frames -> (t, H, W, 3) uint8 RGB."""
    if os.path.isdir(path):
        from PIL import Image

        files = frame_files(path)
        return np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in indices])
    if path.lower().endswith(GIF_EXTENSIONS):
        import imageio.v3 as iio

        frames = iio.imread(path, index=None, plugin="pillow", mode="RGB")  # (n, H, W, 3)
        return np.ascontiguousarray(frames[indices])
    try:
        import av  # noqa: F401  (PyAV: 2.3x faster per training clip, scripts/bench/video_decode.py)
    except ImportError:
        return read_video_frames_imageio(path, indices)
    return read_video_frames_pyav(path, indices)


def read_video_frames_imageio(path: str, indices: list[int]) -> np.ndarray:
    """Frames `indices` of a video file through imageio's ffmpeg reader -> (t, H, W, 3) uint8 RGB."""
    import imageio.v2 as iio2

    with iio2.get_reader(path, "ffmpeg") as reader:
        return np.stack([reader.get_data(i)[..., :3] for i in indices])


def read_video_frames_pyav(path: str, indices: list[int]) -> np.ndarray:
    """Frames `indices` of a video file through PyAV -> (t, H, W, 3) uint8 RGB, decoding up to the last one."""
    import av

    wanted, out = set(indices), {}
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    missing = sorted(wanted - set(out))
    if missing:
        raise ValueError(f"video {path} has no frame(s) {missing[:3]} (it decoded {len(out)} of those asked)")
    return np.stack([out[i] for i in indices])


def resize_center_crop(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(t, h, w, 3) uint8 -> (t, 3, H, W) float in [-1, 1]: shorter side scaled to cover (H, W), centre crop."""
    height, width = size
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (t, 3, h, w) in [0, 255]
    scale = max(height / video.shape[-2], width / video.shape[-1])
    resized = (max(height, round(video.shape[-2] * scale)), max(width, round(video.shape[-1] * scale)))
    if resized != tuple(video.shape[-2:]):
        video = F.interpolate(video, size=resized, mode="bicubic", antialias=True, align_corners=False)
    top, left = (resized[0] - height) // 2, (resized[1] - width) // 2
    video = video[..., top:top + height, left:left + width]  # (t, 3, H, W)
    return (video / 127.5 - 1.0).clamp(-1.0, 1.0).contiguous()  # the standard layout, whatever the crop left


def with_motion_buckets(sources: list[VideoSource], folder: str) -> list[VideoSource]:
    """Each source with its value from <folder>/motion_buckets.json ({path relative to folder: id})."""
    path = os.path.join(folder, MOTION_BUCKETS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"motion_bucket_id: file needs {path} ({{relative path: motion_bucket_id}})")
    with open(path) as f:
        given = json.load(f)
    names = [os.path.relpath(s.path, folder) for s in sources]
    missing = [name for name in names if name not in given]
    if missing:
        raise ValueError(f"{path} has no motion_bucket_id for {len(missing)} of {len(names)} videos: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return [replace(s, motion_bucket_id=float(given[name])) for s, name in zip(sources, names)]


def motion_bucket_of(video: torch.Tensor, scale: float = MOTION_BUCKET_SCALE) -> int:
    """(t, 3, H, W) clip in [-1, 1], as the model sees it -> motion_bucket_id by the optical-flow rule."""
    uint8 = ((video + 1.0) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()  # (t, H, W, 3)
    return motion_bucket_from_flow(mean_flow_percent(uint8), scale)


def scan(folder: str, min_frames: int) -> tuple[list[VideoSource], list[str]]:
    """(usable videos, one line per skipped file naming it and why)."""
    sources, skipped = [], []
    for path in list_videos(folder):
        try:
            source = probe(path)
        except Exception as error:  # any decoder error: the file is skipped, not the run
            skipped.append(f"{path} (unreadable: {type(error).__name__}: {str(error).splitlines()[0][:120]})")
            continue
        if source.num_frames < min_frames:
            skipped.append(f"{path} ({source.num_frames} frames < {min_frames} needed)")
        else:
            sources.append(source)
    return sources, skipped


# ---------------------------------------------------------------------------------------- dataset
class VideoClips(Dataset):
    """Item (index, seed) -> one clip and its micro-conditioning, every draw from `seed`."""

    def __init__(
        self,
        sources: list[VideoSource],  # from `scan`
        size: tuple[int, int],  # (H, W)
        num_frames: int,  # t
        frame_stride: int,  # container frames between clip frames
        fps_id,  # None (from the video) or a law spec
        motion_bucket_id,  # "flow", "file" or a law spec
        cond_aug,  # a law spec
        frames_fps: float | None = None,  # frame rate of folders of frames (they have no container)
        motion_bucket_scale: float = MOTION_BUCKET_SCALE,  # buckets per percent of the shorter side per frame
    ):
        self.sources, self.size, self.num_frames, self.frame_stride = sources, size, num_frames, frame_stride
        self.fps_law = None if fps_id is None else parse_law(fps_id, "fps_id", integer=True)
        self.motion_mode = motion_bucket_id if motion_bucket_id in ("flow", "file") else "law"
        self.motion_law = parse_law(motion_bucket_id, "motion_bucket_id", True) if self.motion_mode == "law" else None
        self.cond_aug_law = parse_law(cond_aug, "cond_aug")
        self.frames_fps, self.motion_bucket_scale = frames_fps, motion_bucket_scale
        self.failed: set[str] = set()  # files that failed after the scan, in this process

    def __len__(self) -> int:
        return len(self.sources)

    def fps_id(self, source: VideoSource, generator: torch.Generator) -> float:
        if self.fps_law is not None:
            return float(self.fps_law.sample(1, generator)[0])
        fps = source.fps if source.fps is not None else self.frames_fps
        if fps is None:
            raise ValueError(f"{source.path} has no frame rate (a folder of frames): set data.params.frames_fps "
                             "or a constant data.params.fps_id")
        return float(fps_id_from_fps(fps, self.frame_stride))

    def clip(self, source: VideoSource, generator: torch.Generator) -> tuple[np.ndarray, list[int]]:
        span = (self.num_frames - 1) * self.frame_stride + 1
        start = int(torch.randint(source.num_frames - span + 1, (1,), generator=generator))
        indices = list(range(start, start + span, self.frame_stride))
        return read_frames(source.path, indices), indices

    def conditioned(self, source: VideoSource, frames: np.ndarray, generator: torch.Generator, seed: int) -> dict:
        """A read clip (t, h, w, 3) uint8 -> the item: the clip as the model sees it and its micro-conditioning."""
        video = resize_center_crop(frames, self.size)  # (t, 3, H, W)
        if self.motion_mode == "flow":
            motion = float(motion_bucket_of(video, self.motion_bucket_scale))
        elif self.motion_mode == "file":
            motion = float(source.motion_bucket_id)
        else:
            motion = float(self.motion_law.sample(1, generator)[0])
        return {
            "video": video,
            "fps_id": self.fps_id(source, generator),
            "motion_bucket_id": motion,
            "cond_aug": float(self.cond_aug_law.sample(1, generator)[0]),
            "seed": seed,
        }

    def exact_item(self, index: int, seed: int) -> dict:
        """Item (index, seed) of video `index` itself: a file that cannot be read raises instead of being
        replaced (the conditioning cache encodes exactly these clips)."""
        source, generator = self.sources[index], torch.Generator().manual_seed(seed)
        frames, _ = self.clip(source, generator)  # (t, h, w, 3) uint8
        return self.conditioned(source, frames, generator, seed)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        for attempt in range(len(self.sources)):  # a file that fails now is replaced by the next one
            source = self.sources[(index + attempt) % len(self.sources)]
            generator = torch.Generator().manual_seed(seed)
            try:
                frames, _ = self.clip(source, generator)  # (t, h, w, 3) uint8
            except Exception as error:
                if source.path not in self.failed:
                    self.failed.add(source.path)
                    warnings.warn(f"skipping {source.path}: {type(error).__name__}: {error}", stacklevel=2)
                continue
            return self.conditioned(source, frames, generator, seed)
        raise RuntimeError(f"no video under the data folder could be read ({len(self.failed)} failed)")


class ClipCollate:
    """Clips -> an SVD batch; the cond_frames noise comes from the clips' own seeds."""

    def __init__(self, input_key: str = "frames"):
        self.input_key = input_key

    def __call__(self, items: list[dict]) -> dict:
        videos = torch.stack([item["video"] for item in items])  # (b, t, 3, H, W)
        generator = seeded_generator(item["seed"] for item in items)
        return make_video_batch(
            cond_image=videos[:, 0],
            num_frames=videos.shape[1],
            fps_id=torch.tensor([item["fps_id"] for item in items]),
            motion_bucket_id=torch.tensor([item["motion_bucket_id"] for item in items]),
            cond_aug=torch.tensor([item["cond_aug"] for item in items]),
            frames=videos,
            input_key=self.input_key,
            generator=generator,
        )


class VideoFolderDataModule(pl.LightningDataModule):
    def __init__(
        self,
        folder: str,  # videos and/or folders of frames, searched recursively
        size: list[int],  # [H, W] of the frames (SVD: [576, 1024])
        num_frames: int = 14,  # t, frames per clip
        frame_stride: int = 1,  # take every frame_stride-th frame
        batch_size: int = 1,  # clips per batch
        fps_id=None,  # null: round(fps / frame_stride) - 1 from the video; or a constant / [lo, hi]
        frames_fps: float | None = None,  # frame rate of folders of frames (for fps_id: null)
        motion_bucket_id="flow",  # "flow" (optical flow, needs opencv), "file" (motion_buckets.json) or a law
        motion_bucket_scale: float = MOTION_BUCKET_SCALE,  # flow rule: buckets per % of the shorter side per frame
        cond_aug=None,  # a constant, [lo, hi] or {log_normal: [p_mean, p_std]}; null: SVD's log-normal
        input_key: str = "frames",  # batch key of the target frames
        num_workers: int = 0,
        seed: int = 0,  # clip starts and draws are a function of (seed, epoch, item)
    ):
        super().__init__()
        if num_frames < 1 or frame_stride < 1:
            raise ValueError(f"num_frames and frame_stride must be >= 1, got {num_frames}, {frame_stride}")
        self.folder, self.size = folder, (int(size[0]), int(size[1]))
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.batch_size, self.num_workers, self.seed, self.input_key = batch_size, num_workers, seed, input_key
        cond_aug = {"log_normal": list(SVD_COND_AUG_LOG_NORMAL)} if cond_aug is None else cond_aug
        self.clip_kwargs = dict(fps_id=fps_id, motion_bucket_id=motion_bucket_id, cond_aug=cond_aug,
                                frames_fps=frames_fps, motion_bucket_scale=motion_bucket_scale)
        VideoClips([], self.size, num_frames, frame_stride, **self.clip_kwargs)  # bad laws fail here, not in setup
        self.collate = ClipCollate(input_key)
        self.skipped: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_dataset"):
            return
        min_frames = (self.num_frames - 1) * self.frame_stride + 1
        sources, self.skipped = scan(self.folder, min_frames)
        total = len(sources) + len(self.skipped)
        if self.skipped:
            warnings.warn(f"{len(self.skipped)} of {total} videos under {self.folder} skipped:\n  "
                          + "\n  ".join(self.skipped), stacklevel=2)
        if not sources:
            raise FileNotFoundError(
                f"no usable videos under {self.folder}: {total} found ({', '.join(VIDEO_EXTENSIONS + GIF_EXTENSIONS)}"
                f" or folders of {'/'.join(FRAME_EXTENSIONS)} frames), each needing >= {min_frames} frames "
                f"(num_frames {self.num_frames}, frame_stride {self.frame_stride})")
        if self.clip_kwargs["motion_bucket_id"] == "file":
            sources = with_motion_buckets(sources, self.folder)
        self.train_dataset = VideoClips(sources, self.size, self.num_frames, self.frame_stride, **self.clip_kwargs)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(  # the same clips after -r as in an uninterrupted run
            self.train_dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, seed=self.seed,
            item_seeds=True, num_workers=self.num_workers, collate_fn=self.collate,
            persistent_workers=self.num_workers > 0)


__all__ = ["ClipCollate", "VideoClips", "VideoFolderDataModule", "VideoSource",
           "list_videos", "motion_bucket_of", "with_motion_buckets", "probe", "read_frames", "resize_center_crop", "scan"]
