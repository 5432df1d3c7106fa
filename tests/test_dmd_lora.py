"""LoRA generator and critic (sgm/modules/distillation/lora.py) on the tiny digits DMD: adapter parameter
counts, the frozen base bit-identical after steps, exact resume, and merged weights equal to the adapted
network's outputs."""
import pytest
import torch
from torch import nn

from sgm.config import load_configs
from sgm.modules.distillation.lora import merge_lora
from sgm.util import ConfigError, instantiate_from_config
from test_dmd_engine import DMD_CONFIG, TEACHER_CONFIG, TINY, build, fit

pytest.importorskip("peft", reason="LoRA needs peft (pip install peft==0.21.2)")
pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA = ("model.params.lora.generator.rank=4", "model.params.lora.generator.alpha=8",
        "model.params.lora.critic.rank=2", "model.params.lora.critic.alpha=2",
        "model.params.generator.update_interval=2")


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A tiny digits teacher with every weight nonzero (a fresh U-Net zero-initialises its output and
    attention out-projections, which would leave attention adapters without gradient)."""
    torch.manual_seed(0)
    teacher = instantiate_from_config(load_configs([TEACHER_CONFIG], TINY).model)
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        teacher.model_ema(teacher.model)
    path = str(tmp_path_factory.mktemp("teacher") / "last.ckpt")
    torch.save({"state_dict": teacher.state_dict(), "global_step": 0}, path)
    return path


def expected_adapter_params(network: nn.Module, rank: int, targets: list[str]) -> int:
    """r (in + out) per targeted Linear: A (r, in), B (out, r)."""
    return sum(rank * (m.in_features + m.out_features) for name, m in network.named_modules()
               if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets))


def base_state(network: nn.Module) -> dict:
    return {k: v.clone() for k, v in network.state_dict().items() if ".lora_" not in k}


def test_adapter_parameter_counts(teacher_ckpt):
    plain = build(teacher_ckpt)
    engine = build(teacher_ckpt, *LORA)
    generator = sum(p.numel() for p in engine.generator_parameters())
    critic = sum(p.numel() for p in engine.critic_parameters())
    assert generator == expected_adapter_params(plain.model.diffusion_model, 4, TARGETS) > 0
    assert critic == expected_adapter_params(plain.fake_score.model.diffusion_model, 2, TARGETS) > 0
    full = sum(p.numel() for p in plain.generator_parameters())
    assert generator < full / 5
    assert set(engine.model_ema.m_name2s_name) == {n for n, p in engine.model.named_parameters() if p.requires_grad}


def test_unknown_role_and_unmatched_target_are_named(teacher_ckpt):
    with pytest.raises(ConfigError, match="lora: unknown role"):
        build(teacher_ckpt, "model.params.lora.teacher.rank=4")
    with pytest.raises(ConfigError, match="lora.critic.target_modules"):
        build(teacher_ckpt, "model.params.lora.critic.target_modules=[no_such_layer]")


def test_frozen_base_is_bit_identical_after_steps(teacher_ckpt):
    engine = build(teacher_ckpt, *LORA)
    before = {"model": base_state(engine.model), "fake_score": base_state(engine.fake_score)}
    adapters = {k: v.clone() for k, v in engine.model.state_dict().items() if ".lora_" in k}
    fit(engine, batches=4, max_steps=3)
    for name, state in before.items():
        after = base_state(getattr(engine, name))
        assert all(torch.equal(state[k], after[k]) for k in state), name
    assert any(not torch.equal(v, engine.model.state_dict()[k]) for k, v in adapters.items())


ON_TEACHER = ("model.params.lora.critic.rank=4", "model.params.lora.critic_on_teacher=true",
              "model.params.generator.update_interval=2")


@pytest.mark.parametrize("overrides", [LORA, ON_TEACHER], ids=["lora", "critic_on_teacher"])
def test_lora_resume_is_exact(teacher_ckpt, tmp_path, overrides):
    straight = build(teacher_ckpt, *overrides)
    fit(straight, batches=10, max_steps=4)
    first = build(teacher_ckpt, *overrides)
    ckpt = str(tmp_path / "step2.ckpt")
    fit(first, batches=10, max_steps=2, save_to=ckpt)
    resumed = build(teacher_ckpt, *overrides)
    trainer = fit(resumed, batches=10, max_steps=4, ckpt_path=ckpt, seed=999)
    assert trainer.global_step == 4
    for name in ("model", "fake_score", "model_ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name


def test_merged_weights_equal_the_adapted_network(teacher_ckpt):
    """Linear and conv adapters (in_layers.2 is a ResBlock's 3x3 conv), merged into plain upstream weights."""
    engine = build(teacher_ckpt, "model.params.lora.generator.rank=3", "model.params.lora.generator.alpha=6",
                   "model.params.lora.generator.target_modules=[to_q,to_v,in_layers.2]")
    adapted = engine.model.diffusion_model
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.1)  # B != 0: the adapters change the output
    merged = merge_lora(adapted.state_dict(), scale=6 / 3)
    cfg = load_configs([DMD_CONFIG], TINY).model.params.network_config
    plain = instantiate_from_config(cfg)
    plain.load_state_dict(merged, strict=True)  # the upstream names, nothing else
    torch.manual_seed(0)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3) * 5
    inputs = {"y": torch.randn(3, cfg.params.adm_in_channels)}  # the teacher's class embedding (sequential)
    with torch.no_grad():
        out_adapted, out_plain = adapted(x, t, **inputs), plain(x, t, **inputs)
    base = build(teacher_ckpt).model.diffusion_model
    with torch.no_grad():
        out_base = base(x, t, **inputs)
    torch.testing.assert_close(out_plain, out_adapted, rtol=1e-5, atol=1e-6)
    assert (out_adapted - out_base).abs().max() > 1e-3


def test_export_merges_the_generator_adapters(teacher_ckpt, tmp_path):
    """export_student.py on a LoRA run writes plain upstream weights: W0 + (alpha / r) B A, no adapter keys."""
    from omegaconf import OmegaConf

    from scripts.export_student import main as export
    from sgm.io.checkpoint import read_state_dict

    overrides = [*TINY, f"model.params.teacher_ckpt_path={teacher_ckpt}", *LORA]
    engine = instantiate_from_config(load_configs([DMD_CONFIG], overrides).model, learning_rate=1e-3)
    with torch.no_grad():
        for name, p in engine.model.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.1)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "configs").mkdir()
    OmegaConf.save(load_configs([DMD_CONFIG], overrides), run / "configs" / "0-project.yaml")
    torch.save({"state_dict": engine.state_dict()}, run / "checkpoints" / "last.ckpt")
    path = export([str(run), "--out", str(tmp_path / "out"), "--no-ema", "--dtype", "float32"])
    exported = read_state_dict(path)
    assert not any(".lora_" in k or ".base_layer." in k for k in exported)
    expected = merge_lora({k: v for k, v in engine.state_dict().items() if k.startswith("model.")}, 8 / 4)
    for key, value in expected.items():
        torch.testing.assert_close(exported[key], value)


def test_critic_on_teacher_never_builds_or_loads_a_second_unet(teacher_ckpt, monkeypatch):
    """lora.critic_on_teacher builds the critic around the teacher's network: two U-Nets are constructed (student,
    teacher), not three, the teacher's weights are loaded into a role once, and every critic tensor (its
    denoiser's buffers included) is real and either the teacher's or its own adapters."""
    from sgm.modules.distillation.roles import ScoreModel
    from sgm.util import get_obj_from_str

    network_cls = get_obj_from_str(load_configs([DMD_CONFIG], TINY).model.params.network_config.target)
    built, loads = [], []
    original_init, original_load = network_cls.__init__, ScoreModel.load_network_weights

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original_init(self, *args, **kwargs)

    def counting_load(self, *args, **kwargs):
        loads.append(self)
        return original_load(self, *args, **kwargs)

    monkeypatch.setattr(network_cls, "__init__", counting_init)
    monkeypatch.setattr(ScoreModel, "load_network_weights", counting_load)
    build(teacher_ckpt, "model.params.lora.critic.rank=4")
    assert len(built) == 3 and len(loads) == 2  # student, teacher, critic; teacher and critic loaded
    built.clear(), loads.clear()
    shared = build(teacher_ckpt, *ON_TEACHER)
    assert len(built) == 2 and len(loads) == 1  # student and teacher; the teacher loaded once
    teacher = {id(p) for p in shared.real_score.parameters()}
    outside = [n for n, p in shared.fake_score.named_parameters() if id(p) not in teacher]
    assert outside == []  # the adapters sit in the shared network too
    assert not any(t.is_meta for t in [*shared.fake_score.parameters(), *shared.fake_score.buffers()])


def test_critic_on_the_teachers_weights(teacher_ckpt):
    """lora.critic_on_teacher: one U-Net less; the teacher still sees W0 alone, the critic W0 + its adapters."""
    plain = build(teacher_ckpt)
    shared = build(teacher_ckpt, "model.params.lora.critic.rank=4", "model.params.lora.critic_on_teacher=true",
                   "model.params.generator.update_interval=2")
    assert shared.fake_score.model is shared.real_score.role.model
    unet = sum(p.numel() for p in plain.fake_score.model.parameters())
    count = lambda engine: sum(p.numel() for p in engine.parameters())  # noqa: E731  (shared counted once)
    adapters = sum(p.numel() for p in shared.critic_parameters())
    assert count(shared) == count(plain) - unet + adapters
    fit(shared, batches=4, max_steps=3)
    torch.manual_seed(0)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 3.0])
    cond = {"vector": torch.randn(2, 128)}
    with torch.no_grad():
        teacher, reference = shared.real_score(x, sigma, cond), plain.real_score(x, sigma, cond)
        critic = shared.fake_score(x, sigma, cond)
    torch.testing.assert_close(teacher, reference, rtol=0, atol=0)  # bit-identical teacher
    assert (critic - teacher).abs().max() > 1e-4  # the critic's adapters trained
