"""Self-Forcing for SV4D 2.0's window chain (chain.py, conditioning window_views) on the multi-view digits DMD
config with a tiny random SV4D-architecture teacher: window i+1 continues the input video from window i's last
frame and takes the student's own views of that frame as cond_view; the drawn window's teacher and critic see
them; the views it was given take no DMD gradient; the windows before it run without grad."""
import os

import pytest
import torch

from sgm.config import load_configs
from sgm.data.multiview_digits import MultiViewDigitsDataModule, camera_angles
from sgm.data.video_batch import CHAIN_VIDEO_KEY, make_window_batch, next_window_batch, window_chain_frames
from sgm.modules.distillation.chain import ChainOptions, draw_chunk
from sgm.modules.distillation.rollout import STREAM_GENERATOR
from sgm.util import ConfigError, instantiate_from_config
from test_dmd_chain import Recorder
from test_dmd_video import generator_step_with_grads
from test_sv4d_dmd import DMD, V, WINDOW, T, teacher_file  # noqa: F401  (the module-scoped fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAIN = os.path.join(ROOT, "configs/dmd/multiview_digits_dmd_chain.yaml")
N = 4  # windows in the overlay

pytestmark = pytest.mark.usefixtures("one_thread")


def window(b: int = 2, t: int = 3, v: int = 2, windows: int = 3) -> dict:
    video = torch.rand(b, window_chain_frames(windows, t), 3, 4, 4) * 2 - 1
    polar, azimuth = camera_angles(v)
    batch = make_window_batch(video[:, :t], polar, azimuth)
    return batch | {CHAIN_VIDEO_KEY: video, "cls": torch.tensor([3, 7])}


def test_the_next_window_continues_the_video_and_takes_the_generated_views_as_reference():
    b, t, v = 2, 3, 2
    batch = window(b, t, v)
    outputs = (torch.rand(b, t * v, 3, 4, 4) * 3 - 1.5).requires_grad_()  # rows (t, v), some out of [-1, 1]
    out = next_window_batch(batch, outputs, 0)
    video = batch[CHAIN_VIDEO_KEY]
    torch.testing.assert_close(out["cond_frames_without_noise"], video[:, t - 1:2 * t - 1].flatten(0, 1))
    refs = outputs.reshape(b, t, v, 3, 4, 4)[:, -1].clamp(-1, 1)  # the last frame's generated views
    torch.testing.assert_close(out["cond_view"], refs.flatten(0, 1))
    assert out["dmd_mask"].view(b, t, v)[:, 0].eq(0).all() and out["dmd_mask"].view(b, t, v)[:, 1:].eq(1).all()
    torch.testing.assert_close(out["polar_rad"], batch["polar_rad"])
    torch.testing.assert_close(out["azimuth_rad"], batch["azimuth_rad"])
    assert torch.equal(out["cls"], batch["cls"]) and out[CHAIN_VIDEO_KEY] is video
    out["cond_view"].sum().backward()  # the views' gradient reaches the window that made them
    assert outputs.grad.view(b, t, v, -1)[:, -1].abs().sum() > 0 and outputs.grad.view(b, t, v, -1)[:, :-1].eq(0).all()
    third = next_window_batch(out, outputs.detach(), 1)
    torch.testing.assert_close(third["cond_frames_without_noise"], video[:, 2 * (t - 1):].flatten(0, 1))


def test_a_window_past_the_input_video_or_without_it_is_refused_by_name():
    batch = window(windows=2)
    outputs = torch.zeros(2, 3 * 2, 3, 4, 4)
    with pytest.raises(ValueError, match="chain_video"):
        next_window_batch(batch, outputs, 1)  # window 2 of a 2-window video
    with pytest.raises(KeyError, match="chain_windows"):
        next_window_batch({k: v for k, v in batch.items() if k != CHAIN_VIDEO_KEY}, outputs, 0)
    with pytest.raises(ConfigError, match="chunk_frames"):
        ChainOptions(conditioning="window_views", chunk_frames=4)
    with pytest.raises(ConfigError, match="conditioning"):
        ChainOptions(conditioning="next_frame")


def test_the_data_yields_the_whole_input_video_and_its_first_window():
    data = MultiViewDigitsDataModule(batch_size=2, num_frames=3, num_views=2, ref_prob=0.0, chain_windows=4)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    video = batch[CHAIN_VIDEO_KEY]
    assert video.shape == (2, 1 + 4 * 2, 3, 16, 16) and batch["num_video_frames"] == 3 * 2
    torch.testing.assert_close(batch["cond_frames_without_noise"], video[:, :3].flatten(0, 1))
    plain = next(iter(_loader(chain_windows=1)))
    assert CHAIN_VIDEO_KEY not in plain


def _loader(**kwargs):
    data = MultiViewDigitsDataModule(batch_size=2, num_frames=3, num_views=2, **kwargs)
    data.setup()
    return data.train_dataloader()


def test_the_drawn_window_is_conditioned_on_the_students_own_views(teacher_file):  # noqa: F811
    config = load_configs([DMD, CHAIN], WINDOW + [f"model.params.teacher_ckpt_path={teacher_file}"])
    engine = instantiate_from_config(config.model, learning_rate=1e-3)
    k = 2
    engine.seed = next(s for s in range(1000) if draw_chunk(N, 0, s, STREAM_GENERATOR) == k)
    data = MultiViewDigitsDataModule(batch_size=1, num_frames=T, num_views=V, size=16, ref_prob=0.0,
                                     chain_windows=config.data.params.chain_windows)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    rec = Recorder(engine)
    log, seen, x0, _ = generator_step_with_grads(engine, batch)
    assert log["chain/chunk"] == k
    assert [grad for grad, _ in rec.calls] == [False] * k + [True]  # 1-step student: one evaluation per window
    chunk = rec.batches[-1]  # the drawn window's batch
    video = batch[CHAIN_VIDEO_KEY]
    torch.testing.assert_close(chunk["cond_frames_without_noise"], video[:, k * (T - 1):k * (T - 1) + T].flatten(0, 1))
    own = rec.calls[k - 1][1].view(1, T, V, 3, 16, 16)[:, -1].clamp(-1, 1)  # window k-1's views (identity VAE)
    torch.testing.assert_close(chunk["cond_view"], own.flatten(0, 1), rtol=0, atol=0)
    teacher_view = seen["cond"]["cond_view"]  # the teacher's embedding of them (identity VAE, float round-off)
    torch.testing.assert_close(teacher_view, own.flatten(0, 1), rtol=0, atol=1e-4)
    assert teacher_view.abs().amax() > 0.1  # not the zeros of a window without reference views
    grad = x0.grad.view(T, V, -1).abs().sum(-1)
    assert grad[0].eq(0).all() and grad[1:].gt(0).all()  # the given reference views are out of the loss
