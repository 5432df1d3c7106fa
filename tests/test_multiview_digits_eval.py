"""Scoring multi-view digits (sgm/evaluation/multiview_digits.py): real views are consistent and score as the
input view, a wrong view breaks consistency, the held-out windows are fixed, and a tiny SV4D 2.0 engine samples
windows of the right layout."""
import os
import sys

import imageio.v3 as iio
import pytest
import torch

from sgm.data.multiview_digits import common_field
from sgm.evaluation import multiview_digits as mv
from sgm.metrics.moving_digits import evaluate_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(ROOT, "configs/example_training/toy/multiview_digits_sv4d2.yaml")
COMMITTED_TEACHER = os.path.join(ROOT, "assets", "multiview_digits_teacher")
N = 12  # windows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def windows():
    return mv.heldout_windows(N, num_frames=4, num_views=4)


def test_heldout_windows_are_deterministic(windows):
    torch.manual_seed(123)  # the global RNG plays no part
    again = mv.heldout_windows(N, num_frames=4, num_views=4)
    for name in ("video", "views", "labels"):
        assert torch.equal(getattr(windows, name), getattr(again, name))
    batch, batch_again = windows.batch(), again.batch()
    assert batch.keys() == batch_again.keys()
    assert all(torch.equal(batch[k], batch_again[k]) for k in batch if isinstance(batch[k], torch.Tensor))
    assert not batch["cond_view"].any() and batch["dmd_mask"].eq(1).all()  # the first window: no reference views
    assert batch["num_video_frames"] == 16 and batch["cond_frames"].shape == (N * 16, 3, 16, 16)
    other = mv.heldout_windows(N, num_frames=4, num_views=4, seed=1)
    assert not torch.equal(windows.video, other.video)  # the seed picks the trajectories
    with pytest.raises(ValueError, match="held-out digits"):
        mv.heldout_windows(10_000)


def test_real_views_are_consistent_and_score_as_the_input_view(windows):
    row = mv.reference_row(windows)
    assert row["view_consistency"] == 0.0 and row["true_view_error"] == 0.0
    input_view = evaluate_clips(common_field(windows.video, [1, 2, 3, 4]), windows.labels)
    for view in row["per_view"]:  # the undone view is the input view itself where all cameras see it
        assert view["frame_accuracy"] == input_view["frame_accuracy"]
        assert view["frame_fd"] == pytest.approx(input_view["frame_fd"])
    # without undoing the transforms the views disagree (the metric is not trivially 0)
    assert mv.view_consistency(windows.views) > 0.1


def test_a_view_of_another_digit_breaks_consistency(windows):
    views = windows.views.clone()
    views[:, :, 2] = views.roll(1, dims=0)[:, :, 2]  # camera 3 shows the previous window's digit
    row = mv.score_views(views, windows)
    errors = [view["true_view_error"] for view in row["per_view"]]
    assert errors[2] > 0.1 and errors[0] == errors[1] == errors[3] == 0
    assert row["view_consistency"] > 0.05 and row["true_view_error"] == pytest.approx(errors[2] / 4)
    # three of the four views still agree: pairs (i, j) with i or j = 3 differ, 3 pairs of 6
    aligned = mv.input_views(views)
    assert row["view_consistency"] == pytest.approx(
        (aligned[:, :, 2:3] - aligned[:, :, [0, 1, 3]]).abs().mean().item() / 2)
    with pytest.raises(ValueError, match="true views"):
        mv.score_views(views[:, :2], windows)


def test_tiny_engine_samples_windows_and_the_gif_has_one_grid_per_window(tmp_path):
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    t, v = 2, 4
    config = load_configs([TEACHER], [f"N_TIME={t}", f"N_VIEW={v}", f"N_FRAMES={t * v}"])
    engine = instantiate_from_config(config.model).eval()  # random weights
    small = mv.heldout_windows(3, num_frames=t, num_views=v)
    row, views = mv.evaluate_engine(engine, small, "random", num_steps=1)
    again, _ = mv.sample_views(engine, small, num_steps=1)
    assert views.shape == (3, t, v, 3, 16, 16) and torch.equal(views, again)  # same seed, same noise
    assert row["steps"] == 1 and row["nfe"] == 2 and len(row["per_view"]) == v  # Euler + CFG
    assert "| random | 1 | 2 |" in mv.markdown_table([row])
    assert mv.per_view_table([row]).count("| random |") == v
    path = mv.save_views_gif(views, small, str(tmp_path / "views.gif"))
    frames = iio.imread(path, index=None)
    assert frames.shape[0] == 3  # one grid per window (rows: input + v views, columns: t frames)
    assert frames.shape[1] > frames.shape[2]  # 1 + v rows of t columns: taller than wide


def test_bench_reads_the_window_from_the_run_or_the_data_defaults(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts", "bench"))
    import distill_multiview_digits as bench

    (tmp_path / "run" / "configs").mkdir(parents=True)
    (tmp_path / "run" / "configs" / "x-project.yaml").write_text(
        "data:\n  target: sgm.data.multiview_digits.MultiViewDigitsDataModule\n  params: {num_frames: 3, size: 20}\n")
    assert bench.window_settings(str(tmp_path / "run")) == dict(num_frames=3, num_views=4, size=20, channels=3)
    assert bench.window_settings(COMMITTED_TEACHER) == dict(num_frames=4, num_views=4, size=16, channels=3)
    (tmp_path / "other" / "configs").mkdir(parents=True)
    (tmp_path / "other" / "configs" / "x-project.yaml").write_text(
        "data:\n  target: sgm.data.moving_digits.MovingDigitsDataModule\n  params: {}\n")
    with pytest.raises(SystemExit, match="MovingDigitsDataModule, not multi-view digits"):
        bench.window_settings(str(tmp_path / "other"))


@pytest.mark.slow
def test_quick_bench_trains_both_students_and_writes_table_and_gifs(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts", "bench"))
    import distill_multiview_digits as bench

    docs = tmp_path / "docs"
    rows = bench.main(["--quick", "--logdir", str(tmp_path / "logs"), "--docs", str(docs)])
    assert [r["model"] for r in rows] == ["real views", f"teacher ({bench.DEFAULT_TEACHER})", "DMD2 1-step student",
                                          "DMD2 4-step student"]
    assert [(r["steps"], r["nfe"]) for r in rows[1:]] == [(2, 4), (1, 1), (4, 4)]  # teacher: Euler + CFG
    for row in rows:
        assert row["n"] == 4 and len(row["per_view"]) == 4 and 0.0 <= row["frame_accuracy"] <= 1.0
    for name in ("multiview_digits_distillation.md", "multiview_digits_distillation.json",
                 "multiview_digits_real.gif", "multiview_digits_teacher.gif", "multiview_digits_student_1step.gif",
                 "multiview_digits_student_4step.gif", "multiview_digits_frames.png"):
        assert (docs / name).is_file(), name


def test_chained_windows_start_on_the_previous_windows_views():
    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    t, v = 2, 4
    config = load_configs([TEACHER], [f"N_TIME={t}", f"N_VIEW={v}", f"N_FRAMES={t * v}"])
    engine = instantiate_from_config(config.model).eval()  # random weights
    clips = mv.heldout_windows(2, num_frames=4, num_views=v)  # 1 + 3 (t - 1): three windows
    seen, sampled = [], []
    original = mv.sample_views

    def recording(engine, windows, **kwargs):
        seen.append(windows)
        sampled.append(original(engine, windows, **kwargs))
        return sampled[-1]

    mv.sample_views = recording
    try:
        rows, views = mv.evaluate_chain(engine, clips, t, "random", num_steps=1)
    finally:
        mv.sample_views = original
    assert [r["window"] for r in rows] == [1, 2, 3] and views.shape == clips.views.shape
    assert seen[0].ref_views is None and not seen[0].batch()["cond_view"].any()
    for k in (1, 2):  # window k+1 = frames k..k+1, given the views window k generated for frame k
        assert torch.equal(seen[k].video, clips.video[:, k:k + 2])
        assert torch.equal(seen[k].ref_views, sampled[k - 1][0][:, -1])
        assert torch.equal(views[:, k], sampled[k][0][:, 0])  # a shared frame keeps the later window's views
        assert seen[k].batch()["dmd_mask"].view(2, t, v)[:, 0].eq(0).all()
    assert torch.equal(views[:, 0], sampled[0][0][:, 0]) and torch.equal(views[:, 3], sampled[2][0][:, 1])
    with pytest.raises(ValueError, match="not a chain of 3-frame windows"):
        mv.evaluate_chain(engine, clips, 3, "random", num_steps=1)
