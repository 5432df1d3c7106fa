"""DMD2 on the SV4D toy (configs/dmd/multiview_digits_dmd.yaml): every role sees cond_view, the
teacher's uc zeroes it, and the reference frame's views take no DMD gradient."""
import os

import pytest
import torch

from sgm.config import load_configs
from sgm.data.multiview_digits import MultiViewDigitsDataModule
from sgm.util import instantiate_from_config
from test_dmd_video import generator_step_with_grads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(ROOT, "configs/example_training/toy/multiview_digits_sv4d2.yaml")
DMD = os.path.join(ROOT, "configs/dmd/multiview_digits_dmd.yaml")
T, V = 2, 4
WINDOW = [f"N_TIME={T}", f"N_VIEW={V}", f"N_FRAMES={T * V}"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    teacher = instantiate_from_config(load_configs([TEACHER], WINDOW + ["model.params.use_ema=False"]).model)
    with torch.no_grad():
        for p in teacher.model.parameters():  # the zero-initialised output layers contribute too
            p.add_(0.02 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.safetensors")
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, path)
    return path


def test_generator_and_critic_losses_on_windows_with_reference_views(teacher_file):
    engine = instantiate_from_config(
        load_configs([DMD], WINDOW + [f"model.params.teacher_ckpt_path={teacher_file}"]).model, learning_rate=1e-3)
    data = MultiViewDigitsDataModule(batch_size=1, num_frames=T, num_views=V, size=16, ref_prob=1.0)
    data.setup()
    torch.manual_seed(1)
    batch = next(iter(data.train_dataloader()))

    _, seen, x0, _ = generator_step_with_grads(engine, batch)  # asserts a finite loss and log
    grad = x0.grad.view(T, V, -1).abs().sum(-1)  # rows (t, v) of the one window
    assert grad[0].eq(0).all() and grad[1:].gt(0).all()  # frame 0's views are the given cond_view
    assert seen["cond"]["cond_view"].any() and not seen["uc"]["cond_view"].any()

    loss, log = engine.critic_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in engine.critic_parameters())
