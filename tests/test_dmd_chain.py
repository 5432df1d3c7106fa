"""Self-Forcing for chained image-to-video (sgm/modules/distillation/chain.py) on the moving-digits DMD config with a
tiny random SVD-architecture teacher (1-step student): the rollout runs exactly the chunks before the drawn one
without grad; the drawn chunk, its teacher and its critic are conditioned on the student's own last frame; the
given frame is masked; gradients cross chunks only when switched on; the draw is the same on 2 gloo ranks and
after a resume. Also the batch re-conditioning, chained sampling (script and per-chunk evaluation)."""
import json
import math
import os
import sys

import pytest
import torch
from torch.utils.data import DataLoader

import pytorch_lightning as pl
from sgm.callbacks.randomness import StepSeed
from sgm.config import load_configs
from sgm.data.video_batch import make_video_batch, recondition_video_batch
from sgm.modules.distillation.chain import draw_chunk, given_frame_mask, run_chain
from sgm.modules.distillation.rollout import STREAM_CRITIC, STREAM_GENERATOR, draw_exit_step
from sgm.rng import seed_step
from sgm.util import fold_frames, instantiate_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_dmd_video import T, save_tiny_teacher, video_batch  # noqa: E402
from two_ranks import run_two_ranks  # noqa: E402

CONFIGS = [os.path.join(ROOT, "configs/dmd/moving_digits_dmd.yaml"),
           os.path.join(ROOT, "configs/dmd/moving_digits_dmd_chain.yaml")]
N = 4  # chunks in the overlay

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return save_tiny_teacher(str(tmp_path_factory.mktemp("teacher") / "teacher.safetensors"))


def build(teacher_file: str, *overrides: str):
    cfg = load_configs(CONFIGS, [f"model.params.teacher_ckpt_path={teacher_file}", *overrides])
    return instantiate_from_config(cfg.model, learning_rate=1e-3)


def seed_drawing(k: int, stream: int = STREAM_GENERATOR) -> int:
    """An engine seed whose chunk draw at global step 0 is k."""
    return next(s for s in range(1000) if draw_chunk(N, 0, s, stream) == k)


class Recorder:
    """Wraps the engine's public calls: every generator evaluation (grad mode, output) and every prepared batch."""

    def __init__(self, engine):
        self.calls, self.batches = [], []
        denoise, prepare = engine.denoise, engine.prepare_inputs

        def recorded_denoise(x, sigma, cond, **kw):
            out = denoise(x, sigma, cond, **kw)
            self.calls.append((torch.is_grad_enabled(), out.detach().clone()))
            return out

        def recorded_prepare(batch, latent_shape=None):
            self.batches.append(batch)
            return prepare(batch, latent_shape)

        engine.denoise, engine.prepare_inputs = recorded_denoise, recorded_prepare


# ------------------------------------------------------------------------------ pieces
def test_recondition_keeps_the_clips_conditioning_and_passes_gradients():
    b, t = 2, 3
    data = make_video_batch(torch.rand(b, 3, 4, 4) * 2 - 1, t, fps_id=torch.tensor([5.0, 6.0]),
                            motion_bucket_id=torch.tensor([10.0, 20.0]), cond_aug=0.5,
                            frames=torch.zeros(b, t, 3, 4, 4))
    data |= {"cls": torch.tensor([3, 7]), "dmd_mask": torch.zeros(b * t)}
    image = torch.rand(b, 3, 4, 4, requires_grad=True)
    out = recondition_video_batch(data, image, generator=torch.Generator().manual_seed(0))
    assert out["cond_frames_without_noise"] is image and out["num_video_frames"] == t
    torch.testing.assert_close(out["fps_id"], data["fps_id"])
    torch.testing.assert_close(out["motion_bucket_id"], data["motion_bucket_id"])
    torch.testing.assert_close(out["cond_aug"], data["cond_aug"])
    noise = out["cond_frames"] - image
    assert 0.2 < float(noise.detach().std()) < 0.8  # cond_aug 0.5 noise, fresh
    assert torch.equal(out["cls"], data["cls"]) and "frames" not in out and "dmd_mask" not in out
    out["cond_frames"].sum().backward()
    assert torch.equal(image.grad, torch.ones_like(image))
    longer = recondition_video_batch(data, image.detach(), num_frames=5)
    assert longer["fps_id"].tolist() == [5.0] * 5 + [6.0] * 5 and longer["image_only_indicator"].shape == (b, 5)


def test_run_chain_conditions_each_chunk_on_the_previous_last_frame():
    data = make_video_batch(torch.zeros(2, 1, 2, 2), 3, cond_aug=0.0)

    def sample(batch, index):  # frame j of chunk i = cond + (j + 1) * 0.25, so chunks climb and then clamp
        cond = batch["cond_frames_without_noise"]
        return torch.stack([cond + (j + 1) * 0.25 for j in range(3)], dim=1)  # (b, t, C, H, W)

    chunks, after = run_chain(sample, data, 3)
    assert [float(c[0, 0, 0, 0, 0]) for c in chunks] == [0.25, 1.0, 1.25]  # chunk 2 starts from the clamped 1.0
    assert float(after["cond_frames_without_noise"].max()) == 1.0
    mask = given_frame_mask(2, 3, 1, torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0]))
    assert mask.tolist() == [0, 1, 0, 0, 1, 1]


def test_chunk_draws_ignore_the_global_rng_and_use_their_own_streams():
    draws = []
    for rank in (0, 1):
        seed_step(3, rank, 11)  # each rank's global RNG differs
        torch.randn(5)
        draws.append([draw_chunk(N, step, 3, STREAM_GENERATOR) for step in range(40)])
    assert draws[0] == draws[1] and set(draws[0]) == set(range(N))
    critic = [draw_chunk(N, step, 3, STREAM_CRITIC) for step in range(40)]
    exits = [draw_exit_step(N, step, 3, STREAM_GENERATOR) for step in range(40)]
    assert critic != draws[0] and exits != draws[0]


# ------------------------------------------------------------------------------ the engine's rollout
def test_the_rollout_runs_exactly_the_chunks_before_the_drawn_one_without_grad(teacher_file):
    engine = build(teacher_file)
    batch = video_batch()
    for k in range(N):
        engine.seed = seed_drawing(k)
        rec = Recorder(engine)
        loss, log = engine.generator_loss(batch)
        assert log["chain/chunk"] == k
        assert [grad for grad, _ in rec.calls] == [False] * k + [True], k  # 1 step per chunk
        engine = build(teacher_file)  # unwrapped again
    engine.seed = seed_drawing(2, STREAM_CRITIC)
    rec = Recorder(engine)
    with torch.no_grad():
        engine.critic_loss(batch)
    assert len(rec.calls) == 2 + 1  # the critic's own draw: chunks 0, 1 then the trained chunk 2


def test_the_drawn_chunk_teacher_and_critic_see_the_students_own_last_frame(teacher_file):
    from test_dmd_video import generator_step_with_grads

    engine = build(teacher_file)
    engine.seed = seed_drawing(2)
    batch = video_batch()
    rec = Recorder(engine)
    critic_seen = {}
    fake_forward = engine.fake_score.forward

    def record_critic(x, sigma, cond, **kw):
        critic_seen.update(cond=cond)
        return fake_forward(x, sigma, cond, **kw)

    engine.fake_score.forward = record_critic
    log, seen, x0, _ = generator_step_with_grads(engine, batch)
    chunk = rec.batches[-1]  # the drawn chunk's batch (prepared last)
    previous = fold_frames(rec.calls[1][1], T)  # chunk 1's frames (the first stage is the identity)
    torch.testing.assert_close(chunk["cond_frames_without_noise"], previous[:, -1].clamp(-1, 1), rtol=0, atol=0)
    assert not torch.allclose(chunk["cond_frames_without_noise"], batch["cond_frames_without_noise"], atol=0.1)
    for cond in (seen["cond"], critic_seen["cond"]):  # concat: the chunk's noisy conditioning frame on every row
        torch.testing.assert_close(fold_frames(cond["concat"], T)[:, 0], chunk["cond_frames"], rtol=0, atol=0)
        torch.testing.assert_close(cond["crossattn"], seen["cond"]["crossattn"], rtol=0, atol=0)
    grad = fold_frames(x0.grad, T)  # the given frame 0 is out of the DMD loss
    assert torch.all(grad[:, 0] == 0) and torch.all(grad[:, 1:].flatten(2).abs().sum(-1) > 0)


@pytest.mark.parametrize("switched_on", [False, True])
def test_gradients_cross_into_the_conditioning_frame_only_when_switched_on(teacher_file, switched_on):
    engine = build(teacher_file, f"model.params.chain.grad_into_cond={switched_on}")
    engine.seed = seed_drawing(1)
    rec = Recorder(engine)
    carried = []
    prepare = engine.prepare_inputs

    def keep_cond_grad(batch, latent_shape=None):
        frame = batch["cond_frames_without_noise"]
        if frame.requires_grad:
            frame.retain_grad()
            carried.append(frame)
        return prepare(batch, latent_shape)

    engine.prepare_inputs = keep_cond_grad
    torch.manual_seed(0)
    loss, _ = engine.generator_loss(video_batch())
    loss.backward()
    assert [grad for grad, _ in rec.calls] == [switched_on, True]  # chunk 0's last (only) step keeps its graph
    if switched_on:
        (frame,) = carried  # the drawn chunk's conditioning frame, chunk 0's last frame
        assert frame.grad is not None and frame.grad.abs().sum() > 0
    else:
        assert carried == []


# ------------------------------------------------------------------------------ synced and resumable
def fit(engine, max_steps: int, ckpt_path: str | None = None, save_to: str | None = None):
    batch = video_batch(1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[StepSeed(0)])
    trainer.fit(engine, DataLoader([batch] * 8, batch_size=None), ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return trainer


def record_draws(engine) -> list:
    """(global step, stream, chunk, sum of the chunk's noisy conditioning frames) of every training chunk."""
    draws, original = [], engine.training_chunk

    def recorded(batch, stream):
        chunk, inputs, k = original(batch, stream)
        draws.append((int(engine.global_step), int(stream), k, round(float(chunk["cond_frames"].sum()), 4)))
        return chunk, inputs, k

    engine.training_chunk = recorded
    return draws


def test_a_resumed_run_draws_the_same_chunks_and_ends_with_the_same_weights(teacher_file, tmp_path):
    overrides = ("model.params.generator.update_interval=2",
                 "model.params.critic.reuse_generator_sample=False")  # every critic step draws its own chunk
    straight = build(teacher_file, *overrides)
    straight_draws = record_draws(straight)
    fit(straight, max_steps=4)
    first = build(teacher_file, *overrides)
    ckpt = str(tmp_path / "step2.ckpt")
    fit(first, max_steps=2, save_to=ckpt)
    resumed = build(teacher_file, *overrides)
    resumed_draws = record_draws(resumed)
    torch.manual_seed(999)  # draws follow (seed, rank, step), not what the process drew before
    fit(resumed, max_steps=4, ckpt_path=ckpt)
    assert resumed_draws == [d for d in straight_draws if d[0] >= 2] and len(resumed_draws) == 3
    assert len({d[2] for d in straight_draws}) > 1
    for name in ("model", "fake_score", "model_ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a), name


class ChunkRecorder(pl.Callback):
    """Test probe for the gloo run: every training chunk draw of this rank -> `rank<k>.json` in `out_dir`."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.draws: list = []

    def on_fit_start(self, trainer, pl_module):
        self.draws = record_draws(pl_module)

    def on_train_end(self, trainer, pl_module):
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"rank": trainer.global_rank, "draws": self.draws}, f)


@pytest.mark.slow
def test_two_gloo_ranks_draw_the_same_chunks(teacher_file, tmp_path):
    first, second = run_two_ranks(
        tmp_path, CONFIGS, teacher_file, "test_dmd_chain.ChunkRecorder", 4, "model.params.generator.update_interval=2",
        "model.params.critic.reuse_generator_sample=False", timeout=600)  # every critic step draws: 4 + 2 draws
    assert (first["rank"], second["rank"]) == (0, 1) and len(first["draws"]) == 4 + 2  # critic 4x, generator 2x
    steps = lambda record: [d[:3] for d in record["draws"]]  # noqa: E731  (step, stream, chunk)
    assert steps(first) == steps(second)
    assert len({d[2] for d in first["draws"]}) > 1
    assert [d[3] for d in first["draws"]] != [d[3] for d in second["draws"]]  # each rank's own data and noise


# ------------------------------------------------------------------------------ chained sampling
def test_evaluate_chain_scores_every_chunk(teacher_file):
    from sgm.evaluation import moving_digits as md

    teacher_cfg = load_configs([os.path.join(ROOT, "configs/example_training/toy/moving_digits_svd.yaml")],
                               ["model.params.use_ema=False", f"model.params.ckpt_path={teacher_file}"])
    teacher = instantiate_from_config(teacher_cfg.model).eval()
    heldout = md.heldout_set(3)
    rows, chunks = md.evaluate_chain(teacher, heldout, "tiny", num_chunks=2, num_steps=2)
    assert [r["chunk"] for r in rows] == [1, 2] and all(c.shape == heldout.clips.shape for c in chunks)
    first, _ = md.sample_clips(teacher, heldout, num_steps=2)
    assert torch.equal(chunks[0], first)  # chunk 1 is the unchained sample: same noise
    assert all(math.isfinite(r[key]) for r in rows for key, *_ in md.CHAIN_METRICS)
    assert rows[1]["first_frame_error"] != rows[0]["first_frame_error"]  # chunk 2 against chunk 1's last frame
    assert "| tiny | 2 |" in md.chain_table(rows)


def test_sampling_script_chains_chunks(teacher_file, tmp_path):
    import imageio.v3 as iio
    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "scripts", "sampling"))
    import simple_video_sample

    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[4:12, 6:10] = 255
    iio.imwrite(tmp_path / "bar.png", image)
    common = ["--config", os.path.join(ROOT, "configs/example_training/toy/moving_digits_svd.yaml"),
              "--ckpt", teacher_file, "--input", str(tmp_path / "bar.png"), "--format", "gif", "--device", "cpu",
              "--num_steps", "2", "model.params.use_ema=False"]
    one = iio.imread(simple_video_sample.main([*common, "--output", str(tmp_path / "one")]), index=None)
    three = iio.imread(simple_video_sample.main([*common, "--output", str(tmp_path / "three"), "--chunks", "3"]),
                       index=None)
    assert one.shape[0] == T and three.shape[0] == 3 * T
    assert np.array_equal(three[:T], one)  # chunk 1 does not depend on how many follow
