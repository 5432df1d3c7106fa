"""SV4D inference configs (configs/inference/sv4d*.yaml): exactly the released layouts on the meta
device, upstream's own sampling config builds too, the sampling settings of upstream's 4D scripts,
and the unconditional branch zeroes what upstream's scripts zero."""
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sgm.config import load_config
from sgm.modules.diffusionmodules.guiders import LinearPredictionGuider, SpatiotemporalPredictionGuider
from sgm.util import instantiate_from_config

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
UPSTREAM_CONFIGS = ROOT / "tests" / "data" / "configs"  # upstream's SV4D sampling configs, copied into the repo
NAMES = ["sv4d", "sv4d2", "sv4d2_8views"]
FACTS = json.loads((DATA / "golden" / "golden.json").read_text())["_facts"]


def assert_matches_manifest(engine: torch.nn.Module, name: str) -> None:
    manifest = json.loads((DATA / "manifests" / f"{name}.json").read_text())
    got = {key: list(t.shape) for key, t in engine.state_dict().items()}
    want = manifest["state_dict"]
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == [], name
    assert [k for k in want if got[k] != want[k]] == [], name
    by_prefix = Counter()
    for key, p in engine.named_parameters():
        by_prefix[key.split(".")[0]] += p.numel()
    assert dict(by_prefix) == manifest["params_by_top_prefix"], name
    assert sum(by_prefix.values()) == manifest["params_total"], name


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_released_layout_on_meta(name):
    config = load_config(str(ROOT / "configs" / "inference" / f"{name}.yaml"))
    with torch.device("meta"):
        engine = instantiate_from_config(config.model)
    assert_matches_manifest(engine, name)


def test_upstream_sv4d2_sampling_config_builds_on_meta():
    config = OmegaConf.load(UPSTREAM_CONFIGS / "sv4d2.yaml")
    config.model.params.ckpt_path = None  # the released file is not here
    with torch.device("meta"):
        engine = instantiate_from_config(config.model)
    assert_matches_manifest(engine, "sv4d2")


GUIDERS = {  # name: (guider class, golden facts entry, num_steps)
    "sv4d": (SpatiotemporalPredictionGuider, "guider sv4d (Spatiotemporal max 2.0 min 1.0, 40 frames, 8 views)", 20),
    "sv4d2": (LinearPredictionGuider, "guider sv4d2 (Linear max 2.0 min 1.0, 48)", 50),
    "sv4d2_8views": (SpatiotemporalPredictionGuider,
                     "guider sv4d2_8views (Spatiotemporal max 2.5 min 1.5, 40 frames, 8 views)", 50),
}


@pytest.mark.parametrize("name", NAMES)
def test_sampler_settings_of_upstream_4d_scripts(name):
    guider_cls, fact, num_steps = GUIDERS[name]
    params = load_config(str(ROOT / "configs" / "inference" / f"{name}.yaml")).model.params
    assert "ckpt_path" not in params
    sampler = instantiate_from_config(params.sampler_config)
    assert type(sampler.guider) is guider_cls and sampler.num_steps == num_steps
    assert sampler.discretization.sigma_max == 700.0
    assert sorted(sampler.guider.additional_cond_keys) == ["cond_motion", "cond_view"]
    expected = torch.tensor(FACTS[fact], dtype=torch.float32).flatten()
    torch.testing.assert_close(sampler.guider.frame_scales(), expected)


def test_overlays_change_only_what_they_say():
    def resolved(name):
        return OmegaConf.to_container(load_config(str(ROOT / "configs" / "inference" / f"{name}.yaml")).model,
                                      resolve=True)

    v1, v2, v2_8 = resolved("sv4d"), resolved("sv4d2"), resolved("sv4d2_8views")
    net1, net2, net8 = (c["params"]["network_config"]["params"] for c in (v1, v2, v2_8))
    assert {k: v for k, v in net2.items() if net1.get(k) != v} == {
        "use_camera_emb": True, "separate_motion_merge_factor": True, "use_3d_attention": True}
    assert {k: v for k, v in net8.items() if net2.get(k) != v} == {"use_3d_attention": False}
    embedders = [c["params"]["conditioner_config"]["params"]["emb_models"] for c in (v1, v2, v2_8)]
    n_cond_frames = [[e["params"].get("n_cond_frames") for e in models] for models in embedders]
    assert n_cond_frames == [[5, 40, None, None, 8, 5], [12, 48, None, None, 4, 12], [5, 40, None, None, 8, 5]]


def test_dmd_sv4d2_builds_every_role_on_meta():
    # as `python main.py --base configs/dmd/dmd_sv4d2.yaml --dry-run`: full size, nothing loaded
    from sgm.config import load_configs

    config = load_configs([str(ROOT / "configs" / "dmd" / "dmd_sv4d2.yaml")])
    with torch.device("meta"):
        engine = instantiate_from_config(config.model)
    network_params = json.loads((DATA / "manifests" / "sv4d2.json").read_text())["params_by_top_prefix"]["model"]
    for role, trainable in ((engine.model, True), (engine.real_score.model, False), (engine.fake_score.model, True)):
        assert type(role).__name__ == "OpenAIWrapperWithViews"  # every role gets cond_view
        assert sum(p.numel() for p in role.parameters()) == network_params
        assert all(p.requires_grad == trainable for p in role.parameters())
    guider = engine.real_score.guider  # the teacher's CFG is SV4D 2.0's own; the critic is unguided
    assert type(guider) is LinearPredictionGuider and guider.frame_scales().shape == (48,)
    assert sorted(guider.additional_cond_keys) == ["cond_motion", "cond_view"]
    assert engine.fake_score.guider is None
    assert len(engine.sampler.generator_sigmas()) == 4
