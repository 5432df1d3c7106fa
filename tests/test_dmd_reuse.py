"""critic.reuse_generator_sample (DMD2's behaviour): the critic step after a generator step trains on
that step's detached sample instead of a rollout of its own. Counted in generator forwards over a few
iterations of a 4-step student, with the option on and off; the critic's input is the generator's x0."""
import pytest
import torch

from sgm.modules.distillation.rollout import STREAM_CRITIC, STREAM_GENERATOR, draw_exit_step
from test_dmd_engine import build, fit, teacher_ckpt  # noqa: F401  (teacher_ckpt is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

FOUR_STEPS = "model.params.sampler_config.params.discretization_config.params.num_steps=4"
ITERATIONS, INTERVAL = 10, 5


def expected_forwards(reuse: bool) -> int:
    """Backward simulation at exit step k runs k + 1 generator forwards; the exit steps follow
    (seed 0, global step, stream), so the count is known before training."""
    total = 0
    for step in range(ITERATIONS):
        generator_step = step % INTERVAL == 0
        if generator_step:
            total += draw_exit_step(4, step, 0, STREAM_GENERATOR) + 1
        if not (generator_step and reuse):
            total += draw_exit_step(4, step, 0, STREAM_CRITIC) + 1
    return total


def count_generator_forwards(engine) -> list[int]:
    calls = [0]
    engine.model.register_forward_hook(lambda module, args, out: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("reuse", [False, True])
def test_generator_forwards_over_iterations(teacher_ckpt, reuse):
    engine = build(teacher_ckpt, FOUR_STEPS, f"model.params.generator.update_interval={INTERVAL}",
                   f"model.params.critic.reuse_generator_sample={reuse}")
    calls = count_generator_forwards(engine)
    fit(engine, batches=ITERATIONS, max_steps=ITERATIONS)
    assert calls[0] == expected_forwards(reuse)
    # seed 0: the generator exits at 0 and 2 (steps 0, 5): 1 + 3 forwards; the critic's ten rollouts
    # take 25, of which 2 + 1 on steps 0 and 5 (exits 1, 0): 29 forwards without reuse, 26 with
    assert (expected_forwards(False), expected_forwards(True)) == (29, 26)
    assert calls[0] == (26 if reuse else 29)


def test_the_critic_trains_on_the_generators_detached_sample(teacher_ckpt):
    engine = build(teacher_ckpt, FOUR_STEPS, "model.params.generator.update_interval=2",
                   "model.params.critic.reuse_generator_sample=True")
    generated, critic_inputs = [], []
    generator_loss_terms, denoising_loss = engine.generator_loss_terms, engine.loss_fn.loss

    def recorded_generator(batch):
        terms = generator_loss_terms(batch)
        generated.append((int(engine.global_step), terms.step.x0))
        return terms

    def recorded_loss(network, x0, *args, **kwargs):
        critic_inputs.append((int(engine.global_step), x0))
        return denoising_loss(network, x0, *args, **kwargs)

    engine.generator_loss_terms, engine.loss_fn.loss = recorded_generator, recorded_loss
    fit(engine, batches=4, max_steps=4)
    assert [s for s, _ in generated] == [0, 2] and [s for s, _ in critic_inputs] == [0, 1, 2, 3]
    for step, x0 in generated:
        assert x0.requires_grad  # the generator's sample carried the gradient to the generator
        critic_x0 = dict(critic_inputs)[step]
        assert not critic_x0.requires_grad and critic_x0.grad_fn is None
        assert torch.equal(critic_x0, x0.detach())
    assert not torch.equal(critic_inputs[1][1], generated[0][1].detach())  # step 1 rolls out afresh

