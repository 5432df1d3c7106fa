"""Write moving-digits clips (sgm.data.moving_digits) to a folder as video files, so that the
video-folder pipeline can be tried end to end on a CPU without a download:

    python scripts/write_moving_digits.py data/moving_digits_mp4 --clips 256
    python main.py --base configs/example_training/toy/moving_digits_finetune.yaml \
        data.params.folder=data/moving_digits_mp4

Files are `<split>_<index>.mp4` (or .gif), RGB, `--size` pixels square, played at `--fps` frames per
second (default 7: SVD's fps_id 6, the value the moving-digits teacher trained with; fixed
trajectories, a function of (--seed, index)). `--upscale k`
writes k-times larger frames (nearest neighbour), closer to what users' own videos look like.
`motion_buckets.json` records each clip's motion_bucket_id under the renderer's code (`--motion_code`,
sgm/data/moving_digits.py), for `motion_bucket_id: file` in VideoFolderDataModule.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgm.data.moving_digits import MovingDigits  # noqa: E402


def clip_to_uint8(video, upscale: int = 1) -> np.ndarray:
    """(t, 3, s, s) tensor in [-1, 1] -> (t, s*upscale, s*upscale, 3) uint8."""
    frames = ((video.clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return frames.repeat(upscale, axis=1).repeat(upscale, axis=2) if upscale > 1 else frames


def write_clip(path: str, frames: np.ndarray, fps: float) -> None:
    import imageio.v2 as iio2

    if path.endswith(".gif"):
        iio2.mimwrite(path, frames, duration=1000.0 / fps, loop=0)
    else:  # H.264 at imageio's highest quality; sides are multiples of 16 for sizes 16, 32, ...
        iio2.mimwrite(path, frames, fps=fps, quality=10, macro_block_size=1)


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write the clips into")
    p.add_argument("--clips", type=int, default=256, help="number of clips (at most the split's digits)")
    p.add_argument("--split", default="train", choices=["train", "heldout"])
    p.add_argument("--num_frames", type=int, default=8)
    p.add_argument("--size", type=int, default=16, help="canvas side in pixels")
    p.add_argument("--max_speed", type=int, default=2, help="pixels per frame")
    p.add_argument("--fps", type=float, default=7.0)
    p.add_argument("--upscale", type=int, default=1)
    p.add_argument("--format", default="mp4", choices=["mp4", "gif"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--motion_code", default=None, help="velocity or speed (default: the renderer's)")
    args = p.parse_args(argv)

    code = {} if args.motion_code is None else {"motion_code": args.motion_code}
    dataset = MovingDigits(args.split, num_frames=args.num_frames, size=args.size, max_speed=args.max_speed,
                           channels=3, seed=args.seed, **code)
    if not 0 < args.clips <= len(dataset):
        raise SystemExit(f"error: --clips must be in 1..{len(dataset)} (digits in the '{args.split}' split)")
    os.makedirs(args.out, exist_ok=True)
    paths, buckets = [], {}
    for index in range(args.clips):
        path = os.path.join(args.out, f"{args.split}_{index:05d}.{args.format}")
        item = dataset[index]
        write_clip(path, clip_to_uint8(item["video"], args.upscale), args.fps)
        paths.append(path)
        buckets[os.path.basename(path)] = item["motion_bucket_id"]
    with open(os.path.join(args.out, "motion_buckets.json"), "w") as f:
        json.dump(buckets, f, indent=0)
    print(f"wrote {len(paths)} clips of {args.num_frames} frames at {args.fps:g} fps to {args.out}")
    return paths


if __name__ == "__main__":
    main()
