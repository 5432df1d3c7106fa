"""Conditioning cache on the tiny moving-digits teacher (tiny CLIP, identity VAE): cached embeddings are
bit-identical to running the embedders on the same rows, whole batches match the live conditioner up to
its own batch-size rounding, the embedders are skipped, and stale caches are refused by name."""
import os
import shutil

import numpy as np
import pytest
import torch

from sgm.config import load_configs
from sgm.data.conditioning_cache import CACHED_SUFFIX, CachedImageFolderDataModule, StaleCacheError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(ROOT, "configs/example_training/toy/moving_digits_svd.yaml")
WEIGHTS = os.path.join(ROOT, "assets/moving_digits_teacher/model.safetensors")
UC_KEYS = ["cond_frames", "cond_frames_without_noise"]

pytestmark = pytest.mark.usefixtures("one_thread")


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cache_conditioning", os.path.join(ROOT, "scripts/cache_conditioning.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_images(folder, count: int = 6, seed: int = 0):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.png"))


def overrides(folder) -> list[str]:
    return [f"data.params.folder={folder}", "data.params.size=[16,16]", "data.params.cond_aug=[0.01,0.2]"]


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_images(root / "images")
    manifest = load_script().main(["--config", TEACHER, "--out", str(root / "cache"), "--ckpt", WEIGHTS,
                                   "--variants", "3", "--shard_size", "4", *overrides(root / "images")])
    assert len(manifest["shards"]) == 2 and manifest["variants"] == 3
    return root


def data_module(root, **changes):
    kwargs = dict(cache=str(root / "cache"), ckpt_path=WEIGHTS, folder=str(root / "images"), size=[16, 16],
                  num_frames=8, batch_size=4, cond_aug=[0.01, 0.2], fps_id=[4, 8])
    data = CachedImageFolderDataModule(**{**kwargs, **changes})
    data.setup()
    return data


def test_cached_conditioning_is_bit_identical_to_the_live_embedders_which_are_skipped(cached):
    conditioner = load_script().load_conditioner(load_configs([TEACHER], overrides(cached / "images")), WEIGHTS, "cpu")
    conditioner.train()  # classifier-free dropout on (ucg_rate 0.1 on both cached embedders)
    for batch in list(iter(data_module(cached).train_dataloader()))[:1] + [next(iter(data_module(cached, seed=1)
                                                                                     .train_dataloader()))]:
        live = {k: v for k, v in batch.items() if not k.endswith(CACHED_SUFFIX)}
        assert {k for k in batch if k.endswith(CACHED_SUFFIX)} == {k + CACHED_SUFFIX for k in UC_KEYS}
        calls = []
        hooks = [conditioner.embedders[i].register_forward_hook(lambda *a: calls.append(1)) for i in (0, 3)]
        torch.manual_seed(5)
        from_cache = conditioner(batch)
        assert calls == []  # CLIP and the VAE embedder did not run
        for hook in hooks:
            hook.remove()
        # Bit-identical to the embedders on the same rows (the cache runs them one image at a time) ...
        with torch.no_grad():
            for i, key in ((0, "cond_frames_without_noise"), (3, "cond_frames")):
                for row in range(4):
                    assert torch.equal(conditioner.embedders[i](live[key][row:row + 1]),
                                       batch[key + CACHED_SUFFIX][row:row + 1]), (key, row)
        # ... and, whole batches through the conditioner (dropout, forced zeros), equal up to the live
        # path's own batch-size jitter: CLIP on 4 rows vs 3 rows differs by 4.8e-7 here.
        torch.manual_seed(5)
        from_embedders = conditioner(live)
        assert from_cache.keys() == from_embedders.keys() == {"crossattn", "vector", "concat"}
        for key in from_cache:
            torch.testing.assert_close(from_cache[key], from_embedders[key], rtol=0, atol=2e-6)
        assert torch.equal(from_cache["vector"], from_embedders["vector"])
        assert torch.equal(from_cache["concat"], from_embedders["concat"])  # identity VAE: batch-invariant
        c, uc = conditioner.get_unconditional_conditioning(batch, force_uc_zero_embeddings=UC_KEYS)
        c_live, uc_live = conditioner.get_unconditional_conditioning(live, force_uc_zero_embeddings=UC_KEYS)
        for key in c:
            torch.testing.assert_close(c[key], c_live[key], rtol=0, atol=2e-6)
            assert torch.equal(uc[key], uc_live[key]), key
        assert uc["crossattn"].abs().sum() == 0 and uc["concat"].abs().sum() == 0
    per_clip = batch["cond_aug"].view(4, 8)[:, 0]
    assert ((per_clip >= 0.01) & (per_clip <= 0.2)).all() and len(set(per_clip.tolist())) > 1
    noise = batch["cond_frames"] - batch["cond_frames_without_noise"]
    assert noise.abs().sum() > 0  # the encoded frames are the noise-augmented ones


def other_weights(tmp_path) -> str:
    """The teacher's weights with one CLIP tensor nudged, as another .safetensors file."""
    from safetensors.torch import load_file, save_file

    weights = load_file(WEIGHTS)
    key = next(k for k in sorted(weights) if k.startswith("conditioner.embedders.0."))
    weights[key] = weights[key] + 1e-3
    other = str(tmp_path / "other_model.safetensors")
    save_file(weights, other)
    return other


def test_stale_or_mismatched_caches_are_refused_by_name(cached, tmp_path):
    with pytest.raises(StaleCacheError, match=r"built at size \[16, 16\], the config asks \[32, 32\]"):
        data_module(cached, size=[32, 32])
    with pytest.raises(StaleCacheError, match="drew cond_aug from Uniform"):
        data_module(cached, cond_aug=0.02)

    other = other_weights(tmp_path)
    with pytest.raises(StaleCacheError, match=r"other embedder weights \(model.safetensors, conditioner.embedders.0."
                                              r", conditioner.embedders.3.\) than .*other_model.safetensors"):
        data_module(cached, ckpt_path=other)

    changed = tmp_path / "copy"
    shutil.copytree(cached, changed)
    write_images(changed / "images", count=7, seed=1)  # 6 rewritten, 1 added
    with pytest.raises(StaleCacheError, match=r"images under .* changed since it was built \(7: 6.png, 0.png"):
        data_module(changed)
    with pytest.raises(FileNotFoundError, match="no conditioning cache at .*nowhere"):
        data_module(cached, cache=str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_main_distils_from_cached_conditioning(cached, tmp_path):
    """Data-free video DMD (the moving-digits teacher, latents from inputs.latent_shape) reading the cache."""
    import glob
    import subprocess
    import sys

    from omegaconf import OmegaConf

    config = load_configs([os.path.join(ROOT, "configs/dmd/moving_digits_dmd.yaml")],
                          ["model.params.inputs.latent_shape=[3,16,16]", "lightning.callbacks.video_eval=null"])
    config.data = OmegaConf.create({"target": "sgm.data.conditioning_cache.CachedImageFolderDataModule", "params": {
        "cache": str(cached / "cache"), "ckpt_path": WEIGHTS, "folder": str(cached / "images"), "size": [16, 16],
        "num_frames": 8, "batch_size": 2, "cond_aug": [0.01, 0.2]}})
    OmegaConf.save(config, tmp_path / "dmd_cached.yaml")
    out = subprocess.run([sys.executable, "main.py", "--base", str(tmp_path / "dmd_cached.yaml"), "-l", str(tmp_path),
                          "-n", "cached", "--max_steps", "2", "model.params.generator.update_interval=2",
                          "lightning.trainer.enable_progress_bar=False", "lightning.trainer.log_every_n_steps=1",
                          "lightning.callbacks.image_logger.params.batch_frequency=1000"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (logdir,) = glob.glob(str(tmp_path / "*_cached"))
    assert torch.load(os.path.join(logdir, "checkpoints", "last.ckpt"), map_location="cpu",
                      weights_only=True)["global_step"] == 2


# ------------------------------------------------------------------------ video folders (fine-tuning)
FINETUNE = os.path.join(ROOT, "configs/example_training/toy/moving_digits_finetune.yaml")
CACHED_VIDEOS = "sgm.data.conditioning_cache.CachedVideoFolderDataModule"


def video_overrides(folder, cache=None) -> list[str]:
    swap = [] if cache is None else [f"data.target={CACHED_VIDEOS}", f"data.params.cache={cache}",
                                     "data.params.ckpt_path=${model.params.ckpt_path}"]
    return [f"data.params.folder={folder}", "data.params.batch_size=4", *swap]


@pytest.fixture(scope="module")
def video_cached(tmp_path_factory):
    """6 moving-digits mp4 clips of 12 frames (5 starts for an 8-frame clip) and their cache with latents."""
    root = tmp_path_factory.mktemp("video_cache")
    from scripts.write_moving_digits import main as write_moving_digits

    write_moving_digits([str(root / "videos"), "--clips", "6", "--num_frames", "12"])
    manifest = load_script().main(["--config", FINETUNE, "--out", str(root / "cache"), "--latents", "--variants", "3",
                                   "--shard_size", "4", *video_overrides(root / "videos")])
    assert manifest["kind"] == "videos" and manifest["latents"] and len(manifest["shards"]) == 2
    return root


def video_data(root, *changes: str, cache: str = "cache"):
    from sgm.util import instantiate_from_config

    config = load_configs([FINETUNE], [*video_overrides(root / "videos", root / cache), *changes])
    data = instantiate_from_config(config.data)
    data.setup()
    return config, data


def test_video_cache_equals_the_live_encoders_which_are_skipped(video_cached, monkeypatch):
    """Cached CLIP / cond-frame latents / target latents of a fine-tuning batch against the live path on the same
    rows: bit-identical per row; through the conditioner and the engine's training inputs, equal up to CLIP's
    batch-size rounding (identity VAE: latents bit-identical)."""
    from sgm.util import instantiate_from_config

    config, data = video_data(video_cached)
    engine = instantiate_from_config(config.model)
    engine.conditioner.train()  # classifier-free dropout on
    batch = next(iter(data.train_dataloader()))
    live = {k: v for k, v in batch.items() if not k.endswith(CACHED_SUFFIX)}
    assert {k for k in batch if k.endswith(CACHED_SUFFIX)} == {k + CACHED_SUFFIX for k in [*UC_KEYS, "frames"]}
    assert batch["frames" + CACHED_SUFFIX].shape == batch["frames"].shape == (4 * 8, 3, 16, 16)
    assert torch.equal(batch["cond_frames_without_noise"], batch["frames"][::8])  # each clip's own first frame
    with torch.no_grad():
        for i, key in ((0, "cond_frames_without_noise"), (3, "cond_frames")):
            for row in range(4):
                assert torch.equal(engine.conditioner.embedders[i](live[key][row:row + 1]),
                                   batch[key + CACHED_SUFFIX][row:row + 1]), (key, row)
    encodes = []
    monkeypatch.setattr(engine.first_stage_model, "encode", lambda x, *a: encodes.append(1) or x)
    calls = []
    hooks = [engine.conditioner.embedders[i].register_forward_hook(lambda *a: calls.append(1)) for i in (0, 3)]
    torch.manual_seed(5)
    cached_inputs = engine.training_inputs(batch)
    assert calls == [] and encodes == []  # neither CLIP, the VAE embedder nor the first stage ran
    torch.manual_seed(5)
    live_inputs = engine.training_inputs(live)
    assert calls == [1, 1] and encodes == [1]
    for hook in hooks:
        hook.remove()
    assert torch.equal(cached_inputs.x0, live_inputs.x0)
    assert torch.equal(cached_inputs.sigma, live_inputs.sigma) and torch.equal(cached_inputs.noise, live_inputs.noise)
    for key in cached_inputs.cond:
        torch.testing.assert_close(cached_inputs.cond[key], live_inputs.cond[key], rtol=0, atol=2e-6)
    assert torch.equal(cached_inputs.cond["concat"], live_inputs.cond["concat"])


def test_video_cache_draws_are_fixed_per_item_and_seed(video_cached):
    """Item (index, seed) is draw seed % K of that video whatever the global RNG; K draws give K clip starts."""
    _, data = video_data(video_cached)
    clips = data.train_dataset
    torch.manual_seed(0)
    a = clips[(2, 7)]
    torch.manual_seed(1)
    b = clips[(2, 7 + 3)]  # the same draw (K = 3)
    assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a if k != "seed")
    firsts = {tuple(clips[(2, k)]["video"][0].flatten()[:64].tolist()) for k in range(3)}
    assert len(firsts) > 1  # the draws hold different clips of the video


def test_stale_video_caches_are_refused_by_name(video_cached, tmp_path):
    with pytest.raises(StaleCacheError, match=r"built with num_frames 8, the config asks 6"):
        video_data(video_cached, "data.params.num_frames=6")
    with pytest.raises(StaleCacheError, match=r"built with frame_stride 1, the config asks 2"):
        video_data(video_cached, "data.params.frame_stride=2")
    with pytest.raises(StaleCacheError, match=r"built at size \[16, 16\], the config asks \[32, 32\]"):
        video_data(video_cached, "data.params.size=[32,32]")
    with pytest.raises(StaleCacheError, match="drew cond_aug from LogNormal.*the config asks Constant"):
        video_data(video_cached, "data.params.cond_aug=0.02")
    with pytest.raises(StaleCacheError, match="built with fps_id from the video .* the config asks Uniform"):
        video_data(video_cached, "data.params.fps_id=[4,8]")

    other = other_weights(tmp_path)
    with pytest.raises(StaleCacheError, match=r"other embedder and first-stage weights \(model.safetensors, "
                                              r"conditioner.embedders.0., conditioner.embedders.3., "
                                              r"first_stage_model.\) than .*other_model.safetensors"):
        video_data(video_cached, f"model.params.ckpt_path={other}")

    changed = tmp_path / "copy"
    shutil.copytree(video_cached, changed)
    os.remove(changed / "videos" / "train_00003.mp4")
    with pytest.raises(StaleCacheError, match=r"videos under .* changed since it was built \(1: train_00003.mp4\)"):
        video_data(changed)
    images = tmp_path / "images"
    write_images(images / "images")
    load_script().main(["--config", TEACHER, "--out", str(images / "cache"), "--ckpt", WEIGHTS, *overrides(images / "images")])
    with pytest.raises(StaleCacheError, match="holds images, this data module reads videos"):
        video_data(video_cached, cache=str(images / "cache"))


@pytest.mark.slow
def test_main_fine_tunes_from_the_video_cache(video_cached, tmp_path):
    """The tiny fine-tuning config trains via main.py with the documented override, images logged from cached batches."""
    import glob
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "main.py", "--base", FINETUNE, "-l", str(tmp_path), "-n", "ftc", "--max_steps", "3",
         *video_overrides(video_cached / "videos", video_cached / "cache"), "lightning.trainer.log_every_n_steps=1",
         "lightning.callbacks.image_logger.params.batch_frequency=2",
         "lightning.callbacks.image_logger.params.log_images_kwargs.N=2", "lightning.trainer.enable_progress_bar=False"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (logdir,) = glob.glob(str(tmp_path / "*_ftc"))
    assert glob.glob(os.path.join(logdir, "images", "train", "samples_gs-000002*.gif"))
    assert torch.load(os.path.join(logdir, "checkpoints", "last.ckpt"), map_location="cpu",
                      weights_only=True)["global_step"] == 3
