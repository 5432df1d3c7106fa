"""Config instantiation and the small shared helpers."""
import pytest
import torch
from omegaconf import OmegaConf

from sgm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler
from sgm.modules.ema import LitEma
from sgm.util import (
    ConfigError,
    append_dims,
    broadcast_cond_to_rows,
    fold_frames,
    freeze,
    instantiate_from_config,
    unfold_frames,
)


def test_instantiate_builds_target_with_params():
    layer = instantiate_from_config({"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 2}})
    assert isinstance(layer, torch.nn.Linear) and layer.weight.shape == (2, 3)


def test_unknown_module_names_path_and_config_key():
    cfg = OmegaConf.create({"model": {"params": {"network_config": {"target": "sgm.modules.nosuch.UNet"}}}})
    with pytest.raises(ConfigError) as info:
        instantiate_from_config(cfg.model.params.network_config)
    message = str(info.value)
    assert "sgm.modules.nosuch.UNet" in message and "model.params.network_config" in message


def test_misspelled_class_names_attribute():
    cfg = OmegaConf.create({"a": [{"target": "torch.nn.Linnear"}]})
    with pytest.raises(ConfigError, match=r"has no attribute 'Linnear'.*a\[0\]"):
        instantiate_from_config(cfg.a[0])


def test_wrong_param_name_is_located():
    cfg = OmegaConf.create({"net": {"target": "torch.nn.Linear", "params": {"in_feature": 3, "out_features": 2}}})
    with pytest.raises(ConfigError, match=r"'net'.*in_feature"):
        instantiate_from_config(cfg.net)


def test_missing_target_and_placeholders():
    with pytest.raises(ConfigError, match="missing key 'target'"):
        instantiate_from_config({"params": {}})
    assert instantiate_from_config("__is_unconditional__") is None


def test_append_dims_and_errors():
    assert append_dims(torch.ones(4), 4).shape == (4, 1, 1, 1)
    with pytest.raises(ValueError):
        append_dims(torch.ones(4, 2, 2), 2)


def test_fold_unfold_frames_roundtrip():
    x = torch.arange(24.0).reshape(6, 4)
    clips = fold_frames(x, 3)
    assert clips.shape == (2, 3, 4) and torch.equal(clips[1, 0], x[3])
    assert torch.equal(unfold_frames(clips), x)
    with pytest.raises(ValueError, match="4-frame clips"):
        fold_frames(x, 4)


def test_broadcast_cond_repeats_per_clip_rows():
    cond = {"crossattn": torch.tensor([[[1.0]], [[2.0]]]), "vector": torch.zeros(6, 3), "other": 5}
    out = broadcast_cond_to_rows(cond, 6)
    assert out["crossattn"].flatten().tolist() == [1, 1, 1, 2, 2, 2]
    assert out["vector"] is cond["vector"] and out["other"] == 5
    with pytest.raises(ValueError, match="crossattn"):
        broadcast_cond_to_rows({"crossattn": cond["crossattn"]}, 5)


def test_freeze_is_sticky():
    layer = freeze(torch.nn.Linear(2, 2))
    layer.train()
    assert not layer.training and not any(p.requires_grad for p in layer.parameters())


def test_ema_update_and_scope():
    net = torch.nn.Linear(2, 1)
    ema = LitEma(net, decay=0.5, use_num_upates=False)
    assert set(ema.state_dict()) == {"decay", "num_updates", "weight", "bias"}
    before = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(2.0)
    ema(net)  # shadow = 0.5 * old + 0.5 * new
    assert torch.allclose(ema.weight, before + 1.0)
    with ema.average_parameters(net):
        assert torch.allclose(net.weight, before + 1.0)
    assert torch.allclose(net.weight, before + 2.0)


def test_ema_warmup_decay():
    ema = LitEma(torch.nn.Linear(1, 1), decay=0.9999)
    assert ema.effective_decay() == pytest.approx(0.1)  # (1+0)/(10+0)


def test_lr_schedules():
    linear = LambdaLinearScheduler(warm_up_steps=[10], f_min=[0.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[110])
    # decay is measured from the start of the cycle, warm-up included (upstream)
    assert linear(0) == 0.0 and linear(5) == pytest.approx(0.5) and linear(10) == pytest.approx(100 / 110)
    assert linear(110) == pytest.approx(0.0)
    cosine = LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.1, lr_max=1.0, lr_start=0.0, max_decay_steps=20)
    assert cosine(10) == pytest.approx(1.0) and cosine(20) == pytest.approx(0.1) and cosine(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="one entry per cycle"):
        LambdaLinearScheduler(warm_up_steps=[1, 2], f_min=[0.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[3])


def test_config_base_includes_merge_and_detect_cycles(tmp_path):
    from sgm.config import load_config

    (tmp_path / "base.yaml").write_text("model:\n  a: 1\n  b: 2\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "overlay.yaml").write_text("_base_: ../base.yaml\nmodel:\n  b: 3\n")
    config = load_config(str(tmp_path / "sub" / "overlay.yaml"))
    assert config.model.a == 1 and config.model.b == 3 and "_base_" not in config
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(str(tmp_path / "loop.yaml"))


def test_importing_sgm_stays_light():
    import subprocess
    import sys

    code = ("import sys, sgm, sgm.modules, sgm.models.autoencoder, sgm.modules.diffusionmodules.sampling, "
            "sgm.modules.diffusionmodules.video_model; "
            "print([m for m in ('pytorch_lightning', 'open_clip', 'kornia', 'torchvision') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_torchvision_shim_lets_lightning_and_open_clip_import():
    import subprocess
    import sys

    code = ("import sgm, sgm.compat as c, pytorch_lightning, open_clip, torchvision.transforms; "
            "print(c.torchvision_ops_loadable(), isinstance(sys.modules.get('torchvision._meta_registrations'), c._Stub))")
    out = subprocess.run([sys.executable, "-c", "import sys; " + code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    ops_loadable, stubbed = out.stdout.split()
    assert stubbed == str(ops_loadable == "False")  # stubbed exactly when the compiled ops cannot load
