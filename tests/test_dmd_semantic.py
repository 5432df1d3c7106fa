"""The DINO-style semantic term: its loss and gradient routing, the EMA teacher head and centre, its
diagnostics (grad/dino and its share, ent/teacher, ent/student, step/dino_head_update_ratio) with the
planted faults of the loss-debugging notes (T_t -> 0, weight 1e-6, frozen head), and gradient-share
balancing."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import pytorch_lightning as pl
from sgm.callbacks.diagnostics import LossDiagnostics
from sgm.diagnostics.probes import DMDProbe
from sgm.diagnostics.rules import verdicts
from sgm.modules.distillation.balance import GradientBalancer
from sgm.modules.distillation.semantic import SemanticTerm
from test_diagnostics import MemoryLogger, as_series, digits_batch, dmd_engine

pytestmark = pytest.mark.usefixtures("one_thread")
DINO = "configs/dmd/digits_dmd_dino.yaml"
TERM = "model.params.terms.dino.params"


class Step:
    """What SemanticTerm reads from a generator step."""

    def __init__(self, x0, pred_real, batch):
        self.x0, self.pred_real, self.batch = x0, pred_real, batch


class Engine:
    input_key = "jpg"

    def real_latents(self, batch, needed_by):
        return batch["jpg"]


def linear_term(**params) -> SemanticTerm:
    encoder = {"target": "torch.nn.Flatten"}  # features = the pixels (N, 16)
    return SemanticTerm(encoder_config=encoder, feature_dim=16, num_prototypes=8, hidden_dim=12, **params)


def test_loss_is_the_cross_entropy_of_centred_sharpened_teacher_targets():
    torch.manual_seed(0)
    term = linear_term(student_temperature=0.2, teacher_temperature=0.05)
    term.center.normal_()
    x0 = torch.randn(5, 1, 4, 4, requires_grad=True)
    real = torch.randn(5, 1, 4, 4)
    losses, log = term.generator_losses(Engine(), Step(x0, None, {"jpg": real}))
    p_t = F.softmax((term.teacher_head(real.flatten(1)) - term.center) / 0.05, dim=-1)
    log_p_s = F.log_softmax(term.student_head(x0.flatten(1)) / 0.2, dim=-1)
    torch.testing.assert_close(losses["dino"], -(p_t * log_p_s).sum(-1).mean())
    torch.testing.assert_close(log["ent/teacher"], -(p_t * p_t.log()).sum(-1).mean())
    assert 0 < float(log["ent/student"]) <= math.log(8) + 1e-6
    losses["dino"].backward()
    assert x0.grad.abs().sum() > 0  # reaches the generator's output
    assert all(p.grad is not None for p in term.student_head.parameters())
    assert all(p.grad is None and not p.requires_grad for p in term.teacher_head.parameters())


def test_pred_real_is_the_target_without_real_data_and_the_teacher_follows_the_student():
    torch.manual_seed(0)
    term = linear_term(teacher_momentum=0.5, center_momentum=0.5)
    x0, pred_real = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    term.generator_losses(Engine(), Step(x0, pred_real, {}))  # no "jpg": pred_real is the target
    batch_center = term.teacher_head(pred_real.flatten(1)).mean(0).detach()
    with torch.no_grad():
        for p in term.student_head.parameters():
            p.add_(1.0)
    before = [p.clone() for p in term.teacher_head.parameters()]
    term.after_generator_step()
    for t, b, s in zip(term.teacher_head.parameters(), before, term.student_head.parameters()):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)
    torch.testing.assert_close(term.center, 0.5 * batch_center)
    with pytest.raises(ValueError, match="target"):
        linear_term(target="fake")


# ------------------------------------------------------------------------------ diagnostics on the engine
def probe(*overrides):
    engine = dmd_engine(*overrides, config=DINO)
    return DMDProbe(teacher_samples=8, teacher_steps=2)(engine, digits_batch(16)).metrics


def dino_verdicts(metrics: dict) -> list[str]:
    return [str(v) for v in verdicts(as_series(metrics)) if v.subject.startswith("dino")]


def test_healthy_term_reports_its_gradient_share_and_entropies():
    metrics = probe()
    assert metrics["grad/dino"] > 0 and 0.05 < metrics["grad/dino_ratio"] < 1
    assert metrics["grad/dino_detached"] == 0 and metrics["grad/dmd"] > 0
    assert 0.1 < metrics["ent/teacher"] < math.log(64) and 0.1 < metrics["ent/student"] <= math.log(64)
    text = dino_verdicts(metrics)
    assert not any(t.startswith(("FAULT", "WARN")) for t in text), text


def test_planted_fault_teacher_temperature_to_zero_gives_one_hot_targets():
    metrics = probe(f"{TERM}.teacher_temperature=1e-5")
    assert metrics["ent/teacher"] < 1e-3
    assert any(t.startswith("FAULT dino") and "too sharp" in t for t in dino_verdicts(metrics))


def test_planted_fault_weight_1e_6_is_weak():
    metrics = probe(f"{TERM}.weight=1e-6")
    assert 0 < metrics["grad/dino_ratio"] < 1e-4
    assert any(t.startswith("WARN  dino") and "weak semantic supervision" in t for t in dino_verdicts(metrics))


@pytest.mark.parametrize("train_head, fault", [(True, False), (False, True)])
def test_planted_fault_frozen_head_shows_in_its_update_ratio(train_head, fault):
    engine = dmd_engine("model.params.generator.update_interval=1", f"{TERM}.train_head={train_head}", config=DINO)
    logger = MemoryLogger()
    callback = LossDiagnostics(every_n_steps=1, teacher_samples=8, teacher_steps=2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=logger, callbacks=[callback],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    trainer.fit(engine, DataLoader([digits_batch(16)] * 3, batch_size=None))
    series = logger.series()
    ratios = [v for _, v in series["step/dino_head_update_ratio"]]
    assert (max(ratios) == 0.0) if fault else (min(ratios) > 1e-5)
    text = [str(v) for v in verdicts(series) if v.subject.startswith("dino")]
    assert any(t.startswith("FAULT dino_head") for t in text) == fault, text


# ------------------------------------------------------------------------------ balancing by gradient
def test_balancing_is_off_by_default_and_moves_a_term_toward_its_target_ratio():
    assert dmd_engine(config=DINO).balancer is None
    engine = dmd_engine("model.params.balance.targets.dino=0.05", "model.params.balance.rate=1.0", config=DINO)
    assert engine.balancer is not None and engine.balancer.scales() == {"dino": 1.0}
    batch = digits_batch(16)
    torch.manual_seed(0)
    _, log = engine.generator_loss(batch)  # global step 0: a balancing step
    first = log["balance/dino_ratio"]
    assert first > 0.05 and log["balance/dino_scale"] == pytest.approx(0.05 / first, rel=1e-4)
    torch.manual_seed(0)
    terms = engine.generator_loss_terms(batch)
    assert terms.weights["dino"] == pytest.approx(0.1 * 0.05 / first, rel=1e-4)  # the weight carries the scale
    params = engine.generator_parameters()
    norm = lambda name: float(torch.sqrt(sum(g.pow(2).sum() for g in torch.autograd.grad(
        terms.weighted(name), params, retain_graph=True, allow_unused=True) if g is not None)))
    assert norm("dino") / norm("dmd") == pytest.approx(0.05, rel=0.05)  # same draws: now on target
    assert "balancer.log_scales" in engine.state_dict()  # resumed runs keep the multipliers


def test_balancer_rejects_a_target_on_its_reference():
    with pytest.raises(ValueError, match="reference"):
        GradientBalancer({"dmd": 1.0})
    assert isinstance(GradientBalancer({"gan": 0.1}), nn.Module)


def test_svd_overlay_encodes_decoded_frames_with_the_conditioners_clip_tower(tmp_path):
    """configs/dmd/svd_dino.yaml on the tiny video DMD config: no encoder copy, the conditioner's CLIP
    tower sees decoded pixels, and the dino loss's gradient reaches the generator's frames."""
    from test_dmd_video import B, T, build, save_tiny_teacher, video_batch

    from sgm.config import load_configs
    from sgm.util import instantiate_from_config

    teacher = save_tiny_teacher(str(tmp_path / "teacher.safetensors"))
    cfg = load_configs(["configs/dmd/moving_digits_dmd.yaml", "configs/dmd/svd_dino.yaml"],
                       [f"model.params.teacher_ckpt_path={teacher}", f"{TERM}.feature_dim=128"])
    engine = instantiate_from_config(cfg.model, learning_rate=1e-3)
    term = engine.terms["dino"]
    assert term.encoder is None and term.decode  # the conditioner's own tower, on pixels
    clip = engine.conditioner.embedder("cond_frames_without_noise")
    seen = []
    clip.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    terms = engine.generator_loss_terms(video_batch())
    assert seen and seen[-1] == (B * T, 3, 16, 16)  # every generated frame, as pixels
    x0 = terms.step.x0
    (grad,) = torch.autograd.grad(terms.losses["dino"], x0)
    assert grad.abs().sum() > 0
    assert not any(p.requires_grad for p in clip.parameters())
    with pytest.raises(ValueError, match="exactly one of"):
        SemanticTerm(feature_dim=4)
    with pytest.raises(Exception, match="no embedder with input_key 'nope'"):
        engine.conditioner.embedder("nope")
