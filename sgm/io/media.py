"""Images and videos out: PNG grids of sample batches, and GIF/MP4 of video batches (clips side by side)."""
from __future__ import annotations

import numpy as np
import torch

from sgm.util import fold_frames

MIN_DISPLAY_SIZE = 64  # tiny images (8x8 digits) are enlarged with nearest-neighbour for viewing


def to_uint8(images: torch.Tensor, rescale: bool = True) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] (or [0, 1] if not rescale) -> (N, H', W', 3) uint8, enlarged if tiny."""
    images = images.detach().float().cpu()
    if rescale:
        images = (images + 1.0) / 2.0
    images = images.clamp(0, 1)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    factor = max(1, MIN_DISPLAY_SIZE // max(images.shape[-2:]))
    if factor > 1:
        images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def make_grid(frames: np.ndarray, n_rows: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, 3) -> one (H', W', 3) grid with `n_cols` = ceil(sqrt(N)) unless n_rows given."""
    n = frames.shape[0]
    cols = int(np.ceil(np.sqrt(n))) if n_rows is None else int(np.ceil(n / n_rows))
    rows = int(np.ceil(n / cols))
    h, w = frames.shape[1:3]
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = frames[i]
    return grid


def image_grid(images: torch.Tensor, n_rows: int | None = None, rescale: bool = True) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one (H', W', 3) uint8 grid."""
    return make_grid(to_uint8(images, rescale), n_rows)


def video_grid(
    frames: torch.Tensor,  # ((b t), C, H, W) in [-1, 1]
    num_frames: int,  # t
    rescale: bool = True,
) -> np.ndarray:
    """All clips side by side: frame k of the result is the grid of every clip's frame k -> (t, H', W', 3) uint8."""
    clips = fold_frames(torch.from_numpy(to_uint8(frames, rescale)), num_frames).numpy()  # (b, t, H, W, 3)
    return np.stack([make_grid(clips[:, k]) for k in range(num_frames)])  # (t, H', W', 3)


def encode_gif(video: np.ndarray, fps: int) -> bytes:
    """(t, H, W, 3) uint8 -> the bytes of a looping GIF (files, and TensorBoard's animated images)."""
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", video, extension=".gif", duration=1000 / fps, loop=0)


def save_image_grid(images: torch.Tensor, path: str, n_rows: int | None = None, rescale: bool = True) -> str:
    return write_image(image_grid(images, n_rows, rescale), path)


def save_video_grid(
    frames: torch.Tensor,  # ((b t), C, H, W) in [-1, 1]
    num_frames: int,  # t
    path: str,  # .gif or .mp4
    fps: int = 6,
    rescale: bool = True,
) -> str:
    """All clips side by side in one animation (`video_grid`)."""
    return write_video(video_grid(frames, num_frames, rescale), path, fps)


def write_image(grid: np.ndarray, path: str) -> str:
    """(H, W, 3) uint8 -> PNG (or what the suffix names)."""
    import imageio.v3 as iio

    iio.imwrite(path, grid)
    return path


def write_video(video: np.ndarray, path: str, fps: int) -> str:
    """(t, H, W, 3) uint8 -> .gif or .mp4 (H.264, sizes cut to even)."""
    import imageio.v3 as iio

    if path.endswith(".gif"):
        with open(path, "wb") as f:
            f.write(encode_gif(video, fps))
    else:
        video = video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]  # even sizes for H.264
        iio.imwrite(path, video, fps=fps, codec="libx264")
    return path


__all__ = ["encode_gif", "image_grid", "make_grid", "save_image_grid", "save_video_grid", "to_uint8", "video_grid",
           "write_image", "write_video"]
