"""Decoding a training clip from an mp4: imageio-ffmpeg against PyAV (sgm.data.video_folder uses PyAV when installed).

    python scripts/bench/video_decode.py                          # 4 synthetic 576x1024 mp4s, 14-frame clips
    python scripts/bench/video_decode.py --size 256 256 --frames 120 --clip 25 --stride 2

Writes `--videos` synthetic H.264 mp4 files (moving gradients, `--frames` frames at 24 fps) into a
temporary folder, then times reading one clip (`--clip` frames every `--stride`, from a random start)
per call with each decoder, `--repeats` calls each, alternating, and prints seconds per clip (median)
and the ratio. PyAV (`pip install av`) is optional: without it only imageio is timed. Both decoders
must return the same frames (checked, up to the codecs' identical output).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sgm.data.video_folder import read_video_frames_imageio, read_video_frames_pyav  # noqa: E402


def write_videos(folder: str, count: int, frames: int, size: tuple[int, int]) -> list[str]:
    import imageio.v2 as iio2

    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    paths = []
    for v in range(count):
        path = os.path.join(folder, f"clip{v}.mp4")
        with iio2.get_writer(path, "ffmpeg", fps=24, codec="libx264", quality=7, macro_block_size=1) as writer:
            for t in range(frames):
                phase = (xs + 3 * t + 17 * v) % 256, (ys + 2 * t) % 256, (xs + ys + t) % 256
                writer.append_data(np.stack(phase, axis=-1).astype(np.uint8))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--frames", type=int, default=60, help="frames per video")
    p.add_argument("--size", type=int, nargs=2, default=[576, 1024], metavar=("H", "W"))
    p.add_argument("--clip", type=int, default=14, help="frames per training clip")
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--repeats", type=int, default=8, help="clips read per decoder")
    args = p.parse_args(argv)
    span = (args.clip - 1) * args.stride + 1
    if span > args.frames:
        raise SystemExit(f"error: a clip spans {span} frames, more than --frames {args.frames}")
    try:
        import av  # noqa: F401

        decoders = {"imageio-ffmpeg": read_video_frames_imageio, "PyAV": read_video_frames_pyav}
    except ImportError:
        decoders = {"imageio-ffmpeg": read_video_frames_imageio}
        print("PyAV not installed (pip install av): timing imageio-ffmpeg only", flush=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_videos(folder, args.videos, args.frames, tuple(args.size))
        seconds = {name: [] for name in decoders}
        for r in range(args.repeats):
            path = paths[r % len(paths)]
            start = int(rng.integers(0, args.frames - span + 1))
            indices = list(range(start, start + span, args.stride))
            results = {}
            for name, read in decoders.items():
                t0 = time.perf_counter()
                results[name] = read(path, indices)
                seconds[name].append(time.perf_counter() - t0)
            if len(results) == 2:
                a, b = results.values()
                if a.shape != b.shape or np.abs(a.astype(int) - b.astype(int)).max() > 2:
                    raise SystemExit(f"error: the decoders disagree on {path} frames {indices}")
    print(f"{args.videos} mp4 videos of {args.frames} frames at {args.size[0]}x{args.size[1]}; clips of {args.clip} "
          f"frames, stride {args.stride}; {args.repeats} clips per decoder")
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    for name, m in medians.items():
        print(f"  {name:15s} {m * 1e3:8.1f} ms per clip (median)")
    if len(medians) == 2:
        print(f"  PyAV / imageio-ffmpeg: {medians['PyAV'] / medians['imageio-ffmpeg']:.2f}")


if __name__ == "__main__":
    main()
