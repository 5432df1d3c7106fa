"""Every training data module continues exactly after -r: the batches after a simulated resume at batch N
(a new data module, the loader's saved state loaded, another global RNG state) equal those of an
uninterrupted run, draws included (fresh trajectories, micro-conditioning laws, clip starts, cond_frames
noise). A text file named .png in an image or frame folder is skipped at setup and named once."""
import warnings

import numpy as np
import pytest
import torch

from sgm.data.image_folder import ImageFolderDataModule
from sgm.data.moving_digits import MovingDigitsDataModule
from sgm.data.multiview_digits import MultiViewDigitsDataModule
from sgm.data.video_folder import VideoFolderDataModule


def take(loader, count: int) -> list[dict]:
    """`count` batches, pass after pass, as Lightning's loop draws them."""
    out = []
    while len(out) < count:
        for batch in loader:
            out.append(batch)
            if len(out) == count:
                break
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for k, (one, two) in enumerate(zip(a, b)):
        assert one.keys() == two.keys(), k
        for key in one:
            if isinstance(one[key], torch.Tensor):
                assert torch.equal(one[key], two[key]), (k, key)
            else:
                assert one[key] == two[key], (k, key)


def assert_resume_is_exact(make, before: int, after: int) -> None:
    """`make()` -> a data module; batches before+after straight == before, then after from a resumed loader."""
    torch.manual_seed(0)
    straight = make()
    straight.setup("fit")
    expected = take(straight.train_dataloader(), before + after)

    torch.manual_seed(1)
    first = make()
    first.setup("fit")
    loader = first.train_dataloader()
    assert_same_batches(take(loader, before), expected[:before])
    state = loader.state_dict()  # what Lightning writes into the checkpoint

    torch.manual_seed(2)  # a resumed process: another global RNG state
    resumed = make()
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    loader.load_state_dict(state)
    assert_same_batches(take(loader, after), expected[before:])
    assert not torch.equal(expected[0][key_of(expected[0])], expected[before][key_of(expected[0])])  # not one batch


def key_of(batch: dict) -> str:
    return "frames" if "frames" in batch else "cond_frames"


@pytest.fixture(autouse=True)
def run_seed(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # main.py -s 7


def write_images(folder, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_moving_digits_resume_exactly_with_fresh_trajectories():
    assert_resume_is_exact(lambda: MovingDigitsDataModule(batch_size=4, num_frames=3, size=12), before=2, after=3)


def test_multiview_digits_resume_exactly():
    assert_resume_is_exact(lambda: MultiViewDigitsDataModule(batch_size=3, num_frames=2, num_views=2, size=12),
                           before=2, after=3)


def test_image_folder_resumes_exactly_across_an_epoch_with_drawn_micro_conditioning(tmp_path):
    write_images(tmp_path / "images", 5)  # batch 2: 2 batches a pass, so the resumed run crosses passes
    laws = dict(fps_id=[4, 10], motion_bucket_id=[60, 200], cond_aug={"log_normal": [-3.0, 0.5]})
    assert_resume_is_exact(lambda: ImageFolderDataModule(folder=str(tmp_path / "images"), size=[8, 8], num_frames=2,
                                                         batch_size=2, **laws), before=3, after=3)


def test_video_folder_resumes_exactly_across_an_epoch(tmp_path):
    for v in range(3):  # folders of frames: no video decoder needed
        write_images(tmp_path / "videos" / f"clip{v}", 6)
    assert_resume_is_exact(lambda: VideoFolderDataModule(folder=str(tmp_path / "videos"), size=[8, 8], num_frames=3,
                                                         batch_size=2, frames_fps=8, motion_bucket_id=[0, 255]),
                           before=1, after=3)


def test_a_text_file_named_png_is_skipped_at_setup_and_named_once(tmp_path):
    images = tmp_path / "images"
    write_images(images, 3)
    (images / "notes.png").write_text("not an image\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ImageFolderDataModule(folder=str(images), size=[8, 8], num_frames=2, batch_size=3)
        data.setup("fit")
    named = [str(w.message) for w in caught if "notes.png" in str(w.message)]
    assert len(named) == 1 and "1 of 4 images" in named[0] and "not an image" in named[0]
    assert len(data.train_dataset) == 3
    assert take(data.train_dataloader(), 3)[-1]["cond_frames"].shape == (3, 3, 8, 8)  # trains on

    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.png").write_text("text")
    with pytest.raises(FileNotFoundError, match="no images .* under .*only_text .1 unreadable files skipped"):
        ImageFolderDataModule(folder=str(tmp_path / "only_text"), size=[8, 8]).setup("fit")


def test_a_text_file_named_png_among_frames_skips_that_video_at_setup(tmp_path):
    for v in range(2):
        write_images(tmp_path / "videos" / f"clip{v}", 4)
    (tmp_path / "videos" / "clip1" / "002_notes.png").write_text("not a frame\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = VideoFolderDataModule(folder=str(tmp_path / "videos"), size=[8, 8], num_frames=3, batch_size=1,
                                     frames_fps=8, motion_bucket_id=127)
        data.setup("fit")
    named = [str(w.message) for w in caught if "002_notes.png" in str(w.message)]
    assert len(named) == 1 and "1 of 2 videos" in named[0]
    assert [s.path.split("/")[-1] for s in data.train_dataset.sources] == ["clip0"]
    assert len(take(data.train_dataloader(), 3)) == 3  # trains on
