"""Print SVD's micro-conditioning for every video of a folder, as VideoFolderDataModule computes it.

    python scripts/motion_buckets.py data/videos --size 576 1024 --num_frames 14 --frame_stride 4

One row per video: frames, container fps, fps_id = round(fps / frame_stride) - 1, and the
motion_bucket_id of `--clips` evenly spaced clips (optical flow of the resized clip, mapped onto 0..255
by sgm.data.micro_conditioning.motion_bucket_from_flow with --scale), then their mean. Skipped files
are listed at the end. Use it to pick frame_stride and motion_bucket_scale before training, or to
choose a motion_bucket_id for sampling that matches clips you like.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgm.data.micro_conditioning import MOTION_BUCKET_SCALE, fps_id_from_fps  # noqa: E402
from sgm.data.video_folder import motion_bucket_of, read_frames, resize_center_crop, scan  # noqa: E402


def clip_starts(num_frames: int, span: int, clips: int) -> list[int]:
    """`clips` evenly spaced starts of a `span`-frame window inside `num_frames` frames."""
    last = num_frames - span
    if clips <= 1 or last == 0:
        return [last // 2]
    return sorted({round(k * last / (clips - 1)) for k in range(clips)})


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--size", type=int, nargs=2, default=[576, 1024], metavar=("H", "W"))
    p.add_argument("--num_frames", type=int, default=14)
    p.add_argument("--frame_stride", type=int, default=1)
    p.add_argument("--clips", type=int, default=3, help="clips per video")
    p.add_argument("--scale", type=float, default=MOTION_BUCKET_SCALE, help="buckets per %% of the shorter side per frame")
    p.add_argument("--frames_fps", type=float, default=None, help="frame rate of folders of frames")
    args = p.parse_args(argv)

    span = (args.num_frames - 1) * args.frame_stride + 1
    sources, skipped = scan(args.folder, span)
    rows = []
    print(f"{'video':<48} {'frames':>6} {'fps':>6} {'fps_id':>6}  motion_bucket_id per clip (mean)")
    for source in sources:
        fps = source.fps if source.fps is not None else args.frames_fps
        fps_id = fps_id_from_fps(fps, args.frame_stride) if fps else None
        buckets = []
        for start in clip_starts(source.num_frames, span, args.clips):
            frames = read_frames(source.path, list(range(start, start + span, args.frame_stride)))
            buckets.append(motion_bucket_of(resize_center_crop(frames, tuple(args.size)), args.scale))
        mean = sum(buckets) / len(buckets)
        rows.append(dict(path=source.path, frames=source.num_frames, fps=fps, fps_id=fps_id, buckets=buckets))
        name = os.path.relpath(source.path, args.folder)
        print(f"{name:<48} {source.num_frames:>6} {fps or float('nan'):>6.2f} {str(fps_id):>6}  "
              f"{' '.join(str(b) for b in buckets)} ({mean:.0f})")
    for line in skipped:
        print(f"skipped: {line}")
    return rows


if __name__ == "__main__":
    main()
