"""A frame strip (PNG) of real / teacher / student clips from a moving-digits evaluation directory.

    python scripts/moving_digits_strip.py logs/<run>/eval --out docs/moving_digits_frames.png

Reads the GIFs `MovingDigitsEvaluation` wrote (`real.gif`, `teacher_25step.gif`, `trained_1step.gif`, ...:
the same held-out clips in the same grid places, `sgm.io.media.video_grid` layout) and lays out, for each of
the first `--clips` clips, one row per GIF with its frames left to right.
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np

PAD = 2  # sgm.io.media.make_grid's padding


def clip_frames(video: np.ndarray, index: int, clips: int) -> np.ndarray:
    """(t, H', W', 3) grid animation of `clips` clips -> (t, h, w, 3) frames of clip `index`."""
    cols = math.ceil(math.sqrt(clips))
    rows = math.ceil(clips / cols)
    tile = (video.shape[1] - PAD) // rows - PAD
    r, c = divmod(index, cols)
    y, x = PAD + r * (tile + PAD), PAD + c * (tile + PAD)
    return video[:, y:y + tile, x:x + tile]


def main(argv: list[str] | None = None) -> str:
    import imageio.v3 as iio

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_dir", help="<run>/eval of a run with the MovingDigitsEvaluation callback")
    p.add_argument("--gifs", nargs="+", default=["real.gif", "teacher_25step.gif", "trained_1step.gif"])
    p.add_argument("--clips", type=int, default=4, help="clips shown (the first ones of the GIFs)")
    p.add_argument("--in_gif", type=int, default=16, help="clips each GIF holds (the callback's gif_clips)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = []
    for i in range(args.clips):
        for name in args.gifs:
            path = os.path.join(args.eval_dir, name)
            if not os.path.isfile(path):
                raise SystemExit(f"error: {path} not found")
            video = np.asarray(iio.imread(path, index=None))[..., :3]  # (t, H', W', 3)
            frames = clip_frames(video, i, args.in_gif)
            rows.append(np.concatenate(list(frames), axis=1))  # (h, t*w, 3)
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))  # gap between clips
    iio.imwrite(args.out, np.concatenate(rows[:-1], axis=0))
    print(f"wrote {args.out}: per clip, rows {', '.join(args.gifs)}")
    return args.out


if __name__ == "__main__":
    main()
