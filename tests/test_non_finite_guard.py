"""A NaN never trains and is never saved: non-finite steps are skipped and counted, N in a row stop the
run naming the role and the term, and the DMD loss lets a NaN teacher show instead of hiding it."""
import os
import sys

import pytest
import torch

from sgm.modules.distillation.guard import NonFiniteError, NonFiniteGuard
from sgm.modules.distillation.losses import dmd_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_dmd_engine import build, fit, network_state, equal_states, teacher_ckpt  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_guard_counts_skips_and_stops_after_n_in_a_row():
    guard = NonFiniteGuard(max_in_a_row=3)
    assert guard.culprit({"loss/dmd": torch.tensor(1.0)}, 2.0) is None
    assert guard.culprit({"loss/dmd": torch.tensor(1.0), "loss/gan": float("nan")}, 2.0) == "loss/gan"
    assert guard.culprit({"loss/dmd": torch.tensor(1.0)}, float("inf")) == "gradient norm"
    assert guard.record("critic", "loss/critic", 0) == 1 and guard.was_skipped("critic")
    assert guard.record("critic", None, 1) == 1 and not guard.was_skipped("critic")  # a good step resets the run
    guard.record("critic", "loss/critic", 2)
    guard.record("critic", "loss/critic", 3)
    with pytest.raises(NonFiniteError, match="stopping at step 4: 3 critic steps in a row had a non-finite loss/critic"):
        guard.record("critic", "loss/critic", 4)


def test_the_dmd_loss_no_longer_hides_a_nan_teacher():
    x0 = torch.randn(2, 1, 4, 4, requires_grad=True)
    pred_fake = torch.randn(2, 1, 4, 4)
    pred_real = torch.randn(2, 1, 4, 4)
    pred_real[0, 0, 0, 0] = float("nan")
    loss, _ = dmd_loss(x0, pred_real, pred_fake)
    assert torch.isnan(loss[0]) and torch.isfinite(loss[1])
    same = x0.detach().clone()
    loss, stats = dmd_loss(x0, same, same)  # x0 == pred_real == pred_fake: 0/0 is a zero gradient
    assert torch.equal(loss, torch.zeros(2)) and torch.equal(stats.grad, torch.zeros_like(x0))


def test_a_nan_teacher_skips_every_generator_step_and_stops_the_run(teacher_ckpt, tmp_path):
    engine = build(teacher_ckpt, "model.params.generator.update_interval=1", "model.params.max_non_finite_steps=3")
    with torch.no_grad():
        engine.real_score.model.diffusion_model.out[-1].bias.fill_(float("nan"))  # NaN teacher output
    generator, ema, critic = (network_state(m) for m in (engine.model, engine.model_ema, engine.fake_score))
    with pytest.raises(NonFiniteError, match="3 generator steps in a row had a non-finite loss/dmd"):
        fit(engine, batches=8, max_steps=6)
    assert equal_states(generator, network_state(engine.model))  # never stepped on a NaN
    assert equal_states(ema, network_state(engine.model_ema))
    assert not equal_states(critic, network_state(engine.fake_score))  # the critic trained meanwhile
    assert all(torch.isfinite(v).all() for k, v in engine.state_dict().items()
               if v.is_floating_point() and not k.startswith("real_score."))  # nothing else went NaN
    assert engine.non_finite_guard.skipped == {"generator": 3, "critic": 0}


def test_skip_counts_survive_a_resume(teacher_ckpt, tmp_path):
    """skipped/<role> and the run of skips in a row continue from the checkpoint instead of restarting at 0."""
    overrides = ("model.params.generator.update_interval=1", "model.params.max_non_finite_steps=5")

    def nan_teacher():
        engine = build(teacher_ckpt, *overrides)
        with torch.no_grad():
            engine.real_score.model.diffusion_model.out[-1].bias.fill_(float("nan"))
        return engine

    first, ckpt = nan_teacher(), str(tmp_path / "step3.ckpt")
    fit(first, batches=8, max_steps=3, save_to=ckpt)
    assert first.non_finite_guard.skipped == {"generator": 3, "critic": 0}
    assert torch.load(ckpt, weights_only=True)["non_finite_guard"]["skipped"] == {"generator": 3, "critic": 0}
    resumed = nan_teacher()
    fit(resumed, batches=8, max_steps=4, ckpt_path=ckpt)
    assert resumed.non_finite_guard.skipped == {"generator": 4, "critic": 0}
    assert resumed.non_finite_guard.in_a_row["generator"] == 4
    with pytest.raises(NonFiniteError, match="stopping at step 4: 5 generator steps in a row"):  # 3 + 2, not 2
        fit(nan_teacher(), batches=8, max_steps=8, ckpt_path=ckpt)
