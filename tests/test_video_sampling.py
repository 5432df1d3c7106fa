"""The sampling script end to end on the tiny SVD-architecture config (CPU, random weights)."""
import os
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts", "sampling"))
CONFIG = os.path.join(ROOT, "configs/example_training/toy/moving_digits_svd.yaml")

import simple_video_sample  # noqa: E402

from sgm.config import load_config  # noqa: E402
from sgm.util import instantiate_from_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    engine = instantiate_from_config(load_config(CONFIG).model)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in engine.state_dict().items()}, str(path))
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[4:12, 6:10] = 255
    image_path = tmp_path_factory.mktemp("img") / "bar.png"
    iio.imwrite(image_path, image)
    return str(path), str(image_path)


@pytest.mark.parametrize("schedule", [["--num_steps", "3"], ["--sigmas", "80,5,0.5"]])
def test_script_writes_a_video(tiny_checkpoint, tmp_path, schedule):
    ckpt, image = tiny_checkpoint
    path = simple_video_sample.main([
        "--config", CONFIG, "--ckpt", ckpt, "--input", image, "--output", str(tmp_path),
        "--format", "gif", "--device", "cpu", *schedule,
    ])
    frames = iio.imread(path, index=None)
    assert frames.shape[0] == 8 and frames.shape[-1] in (3, 4)


def test_missing_input_is_a_clear_error(tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="input image not found"):
        simple_video_sample.main(["--config", CONFIG, "--input", str(tmp_path / "nope.png"), "--device", "cpu"])


def run_script(*args: str):
    """The script as a user runs it: (return code, stderr)."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sampling", "simple_video_sample.py"), *args],
                         capture_output=True, text=True, timeout=300, env=env)
    return out.returncode, out.stderr


@pytest.mark.parametrize("case", ["text_as_png", "size_16by16"])
def test_bad_inputs_fail_with_one_line_naming_them(tiny_checkpoint, tmp_path, case):
    ckpt, image = tiny_checkpoint
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    if case == "text_as_png":
        args, expected = ["--input", str(text)], f"cannot read input image {text}"
    else:
        args, expected = ["--input", image, "--size", "16by16"], "--size must be HxW in pixels, e.g. 576x1024; got '16by16'"
    code, stderr = run_script("--config", CONFIG, "--ckpt", ckpt, "--device", "cpu", "--output", str(tmp_path), *args)
    assert code != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert len(stderr.strip().splitlines()) == 1 and expected in stderr, stderr[-3000:]
