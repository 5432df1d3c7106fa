"""Inference configs (configs/inference/): each builds exactly the state-dict layout of upstream's
released checkpoint (manifests, UPSTREAM.md §18), samples with the settings of upstream's scripts,
and a full-size engine built on the meta device loads a synthetic released checkpoint."""
import gc
import json
import os
import shutil
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from sgm.config import load_config
from sgm.io.checkpoint import load_weights, read_state_dict
from sgm.modules.diffusionmodules.guiders import LinearPredictionGuider, TrianglePredictionGuider
from sgm.util import instantiate_from_config

CONFIGS = Path(__file__).parents[1] / "configs" / "inference"
MANIFESTS = Path(__file__).parent / "data" / "manifests"
# Every released SVD / SV3D model (SV4D's: tests/test_sv4d_configs.py).
NAMES = ["svd", "svd_xt", "svd_xt_1_1", "svd_image_decoder", "svd_xt_image_decoder", "sv3d_u", "sv3d_p"]


def manifest(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def config(name: str):
    return load_config(str(CONFIGS / f"{name}.yaml"))


def build_on_meta(name: str) -> nn.Module:
    """The whole DiffusionEngine without storage: ViT-H + the 1.5B U-Net in well under a second each."""
    with torch.device("meta"):
        return instantiate_from_config(config(name).model)


def show(keys: list[str], limit: int = 20) -> str:
    return ", ".join(keys[:limit]) + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------
# Layout: our configs build upstream's released models key for key
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_engine_matches_released_layout(name):
    expected = manifest(name)
    engine = build_on_meta(name)
    got = {key: list(t.shape) for key, t in engine.state_dict().items()}
    want = expected["state_dict"]

    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, (
        f"{name}: {len(missing)} manifest keys not built: {show(missing)}; "
        f"{len(extra)} built keys not in the manifest: {show(extra)}"
    )
    wrong = [f"{k}: built {got[k]} vs manifest {want[k]}" for k in want if got[k] != want[k]]
    assert not wrong, f"{name}: {len(wrong)} shapes differ: {show(wrong)}"

    params = dict(engine.named_parameters())
    assert sum(p.numel() for p in params.values()) == expected["params_total"]
    by_prefix = Counter()
    for key, p in params.items():
        by_prefix[key.split(".")[0]] += p.numel()
    assert dict(by_prefix) == expected["params_by_top_prefix"]


# ---------------------------------------------------------------------------------------------
# Sampling settings of upstream's scripts (UPSTREAM.md §10.2, §10.3, §11)
# ---------------------------------------------------------------------------------------------

SAMPLING = {  # name: (guider class, num_frames T, min_scale, max_scale, num_steps)
    "svd": (LinearPredictionGuider, 14, 1.0, 2.5, 25),
    "svd_image_decoder": (LinearPredictionGuider, 14, 1.0, 2.5, 25),
    "svd_xt": (LinearPredictionGuider, 25, 1.5, 3.0, 30),
    "svd_xt_1_1": (LinearPredictionGuider, 25, 1.5, 3.0, 30),
    "svd_xt_image_decoder": (LinearPredictionGuider, 25, 1.5, 3.0, 30),
    "sv3d_u": (TrianglePredictionGuider, 21, 1.0, 2.5, 50),
    "sv3d_p": (TrianglePredictionGuider, 21, 1.0, 2.5, 50),
}


@pytest.mark.parametrize("name", NAMES)
def test_sampler_settings(name):
    guider_cls, T, min_scale, max_scale, num_steps = SAMPLING[name]
    params = config(name).model.params
    assert "ckpt_path" not in params  # the sampling script passes the weights
    sampler = instantiate_from_config(params.sampler_config)
    assert type(sampler.guider) is guider_cls
    assert sampler.num_steps == num_steps
    assert sampler.discretization.sigma_max == 700.0
    scales = sampler.guider.frame_scales()  # num_frames comes from the config
    assert scales.shape == (T,)
    assert scales.min().item() == pytest.approx(min_scale)
    assert scales.max().item() == pytest.approx(max_scale)
    if guider_cls is LinearPredictionGuider:
        assert scales[0].item() == pytest.approx(min_scale) and scales[-1].item() == pytest.approx(max_scale)
    else:  # triangle: low at both ends of the orbit, peak in the middle
        assert scales[0].item() == pytest.approx(min_scale) and scales.argmax().item() == T // 2


def test_svd_family_shares_one_definition():
    """Overlays change only what their header comment says: the resolved configs differ from svd.yaml
    in exactly those places."""
    def resolved(name):
        return OmegaConf.to_container(config(name).model, resolve=True)

    svd, xt, xt11 = resolved("svd"), resolved("svd_xt"), resolved("svd_xt_1_1")
    assert xt11 == xt
    xt["params"]["sampler_config"] = svd["params"]["sampler_config"]
    assert xt == svd
    image, xt_image = resolved("svd_image_decoder"), resolved("svd_xt_image_decoder")
    assert image["params"]["first_stage_config"]["target"] == "sgm.models.autoencoder.AutoencoderKL"
    assert xt_image["params"]["first_stage_config"] == image["params"]["first_stage_config"]
    assert xt_image["params"]["sampler_config"] == resolved("svd_xt")["params"]["sampler_config"]


# ---------------------------------------------------------------------------------------------
# Loading into a module built on the meta device
# ---------------------------------------------------------------------------------------------


def tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))  # params + float/int buffers


def test_load_weights_fills_meta_module_from_fp16_file(tmp_path):
    reference = tiny()
    reference[1].running_mean.normal_()
    reference[1].num_batches_tracked.fill_(7)
    released = {k: v.half() if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    path = tmp_path / "tiny.safetensors"
    save_file(released, str(path))

    with torch.device("meta"):
        module = tiny()
    report = load_weights(module, read_state_dict(str(path)), path=str(path))

    assert not report.missing and not report.unexpected
    for key, value in module.state_dict().items():
        assert not value.is_meta, key
        assert value.dtype == reference.state_dict()[key].dtype, key  # fp16 file -> fp32 module
        assert torch.equal(value, released[key].to(value.dtype)), key
    for p in module.parameters():  # still parameters, still trainable
        assert isinstance(p, nn.Parameter) and p.requires_grad
    x = torch.randn(5, 3)
    module.eval(), reference.eval()
    reference.load_state_dict(released)  # the same weights through an ordinary (copying) load
    torch.testing.assert_close(module(x), reference(x))


def test_load_weights_meta_module_keeps_errors_and_reports_gaps():
    with torch.device("meta"):
        module = tiny()
    partial = {k: v for k, v in tiny().state_dict().items() if not k.startswith("2.")}
    with pytest.raises(Exception, match="required keys are missing"):
        load_weights(module, partial)
    report = load_weights(module, partial, required_prefixes=("0.",))
    assert report.missing == ["2.bias", "2.weight"]
    assert module[0].weight.device.type == "cpu" and module[2].weight.is_meta  # gaps stay on meta
    with torch.device("meta"):
        module = tiny()
    with pytest.raises(Exception, match="wrong shape"):
        load_weights(module, {"0.weight": torch.zeros(3, 3)})


def test_meta_built_engine_has_no_meta_tensors_outside_its_state_dict():
    engine = build_on_meta("svd")
    persistent = set(engine.state_dict())
    on_meta = [key for key, b in engine.named_buffers() if key not in persistent and b.is_meta]
    assert not on_meta, f"non-persistent buffers on meta: {on_meta}"


# ---------------------------------------------------------------------------------------------
# Acceptance: a synthetic released checkpoint loads with zero missing and zero unexpected keys
# ---------------------------------------------------------------------------------------------

GB = 1e9


def total_ram() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_ram() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: line.split()[1] for line in f}
    return int(info.get("MemAvailable", 0)) * 1024


def marker(index: int) -> float:
    return float(index % 2000 + 1)  # small integers: exact in fp16


def write_released_checkpoint(path: Path, shapes: dict[str, list[int]]) -> None:
    """An fp16 .safetensors file with exactly these keys and shapes, written without holding it in
    memory: the header, a sparse (zero) data section, and each tensor's first element set to
    `marker(i)` so a key that lands in the wrong parameter is caught."""
    keys = sorted(shapes)
    header, offset = {}, 0
    for key in keys:
        nbytes = 2 * torch.Size(shapes[key]).numel()
        header[key] = {"dtype": "F16", "shape": shapes[key], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    start = 8 + len(text)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(start + offset)
        for index, key in enumerate(keys):
            f.seek(start + header[key]["data_offsets"][0])
            f.write(struct.pack("<e", marker(index)))


@pytest.mark.heavy
@pytest.mark.skipif(os.environ.get("SGM_HEAVY_TESTS") != "1", reason="heavy (4.8 GB file, ~15 GB RAM, 1-2 min "
                    "on 2 cores): set SGM_HEAVY_TESTS=1")
@pytest.mark.parametrize("name", ["svd"])
def test_synthetic_released_checkpoint_loads_into_meta_engine(name, tmp_path, capsys):
    expected = manifest(name)
    file_gb = 2 * expected["state_dict_numel_total"] / GB
    if shutil.disk_usage(tmp_path).free < 12 * GB:
        pytest.skip(f"needs 12 GB free disk in {tmp_path} for a {file_gb:.1f} GB checkpoint")
    # Peak RSS: the fp16 file (2 bytes/param, memory-mapped by safetensors: clean page cache the
    # kernel can drop) plus the fp32 model (4 bytes/param), about 14.5 GB for SVD.
    need = 4 * expected["state_dict_numel_total"] + 2 * GB
    if total_ram() < 16 * GB or available_ram() < need:
        pytest.skip(f"needs 16 GB RAM and {need / GB:.0f} GB available "
                    f"(total {total_ram() / GB:.0f} GB, available {available_ram() / GB:.0f} GB)")

    path = tmp_path / f"{name}.safetensors"
    write_released_checkpoint(path, expected["state_dict"])
    engine = build_on_meta(name)
    try:
        engine.init_from_ckpt(str(path))
        assert "all keys matched" in capsys.readouterr().out  # zero missing, zero unexpected

        state = engine.state_dict()
        assert sorted(state) == sorted(expected["state_dict"])
        for index, key in enumerate(sorted(state)):
            value = state[key]
            assert not value.is_meta and value.dtype == torch.float32, key
            assert value.flatten()[0].item() == marker(index), key
        for key, p in engine.named_parameters():
            assert isinstance(p, nn.Parameter) and p.device.type == "cpu" and p.dtype == torch.float32, key
    finally:
        del engine
        gc.collect()
        path.unlink(missing_ok=True)
