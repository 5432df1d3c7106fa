"""One rule for training randomness, (seed, rank, step): ranks draw different noise and sigmas, resumed
runs draw what uninterrupted runs drew, and the data order continues inside an epoch after -r."""
import glob
import hashlib
import json
import os
import sys

import pytest
import torch

import sgm  # noqa: F401  (before Lightning: torchvision shim)
import pytorch_lightning as pl
from sgm.data.resumable import ResumableDataLoader
from sgm.rng import seed_step, step_seed
from two_ranks import run_two_ranks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_step_seed_is_a_function_of_seed_rank_and_step():
    seeds = {step_seed(s, r, t) for s in range(3) for r in range(4) for t in range(50)}
    assert len(seeds) == 3 * 4 * 50 and all(0 <= v < 2**63 for v in seeds)
    assert step_seed(23, 1, 7) == step_seed(23, 1, 7)
    seed_step(23, 0, 5)
    a = torch.randn(4)
    torch.randn(100)  # whatever was drawn before, the next step starts from the rule
    seed_step(23, 0, 5)
    assert torch.equal(a, torch.randn(4))
    seed_step(23, 1, 5)
    assert not torch.equal(a, torch.randn(4))
    with pytest.raises(ValueError, match="must be >= 0"):
        step_seed(0, -1, 0)


def _items(batches) -> list[int]:
    return [int(i) for b in batches for i in b]


def test_the_data_order_continues_inside_an_epoch_after_a_resume():
    data = list(range(20))
    straight = ResumableDataLoader(data, batch_size=3, seed=5)
    full = [_items(straight), _items(straight)]  # two passes: 6 batches each, different orders
    assert sorted(full[0]) != full[0] and full[0] != full[1] and len(full[0]) == 18

    first = ResumableDataLoader(data, batch_size=3, seed=5)
    it = iter(first)
    seen = _items([next(it), next(it)])
    state = first.state_dict()
    assert state == {"epoch": 0, "batches": 2}
    resumed = ResumableDataLoader(data, batch_size=3, seed=5)
    resumed.set_epoch = None  # Lightning's epoch counter plays no part (see ResumableSampler)
    resumed.load_state_dict(state)
    assert seen + _items(resumed) == full[0]
    assert _items(resumed) == full[1]

    ended = ResumableDataLoader(data, batch_size=3, seed=5)
    ended.load_state_dict({"epoch": 0, "batches": 6})  # saved after the pass's last batch
    assert _items(ended) == full[1]


class NoiseRecorder(pl.Callback):
    """Test probe: hashes of the DMD term's x_t - x0 = sigma * eps and its sigmas (DMDEngine.noised) per rank."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.draws: list[tuple[int, str, list[float]]] = []

    def on_fit_start(self, trainer, pl_module):
        noised = pl_module.noised

        def recorded(x0, inputs):
            x_t, sigma = noised(x0, inputs)
            noise = (x_t - x0).detach().contiguous().numpy().tobytes()
            self.draws.append((int(pl_module.global_step), hashlib.sha256(noise).hexdigest(),
                               [round(float(s), 6) for s in sigma]))
            return x_t, sigma

        pl_module.noised = recorded

    def on_train_end(self, trainer, pl_module):
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"draws": self.draws, "run_dir": trainer.default_root_dir}, f)


@pytest.mark.slow
def test_two_gloo_ranks_draw_different_noise_and_sigmas_and_share_one_run_dir(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_dmd_video import save_tiny_teacher

    teacher = save_tiny_teacher(str(tmp_path / "teacher.safetensors"))
    first, second = run_two_ranks(tmp_path, ["configs/dmd/moving_digits_dmd.yaml"], teacher,
                                  "test_rank_randomness.NoiseRecorder", 1, "model.params.generator.update_interval=2")
    assert len(first["draws"]) == len(second["draws"]) == 1  # the DMD term's draw at generator step 0
    for a, b in zip(first["draws"], second["draws"]):
        assert a[0] == b[0] and a[1] != b[1], a[0]  # same step, different eps
    assert [a[2] for a in first["draws"]] != [b[2] for b in second["draws"]]  # different sigmas
    assert first["run_dir"] == second["run_dir"]
    assert len(glob.glob(str(tmp_path / "logs" / "*"))) == 1  # one run directory for both ranks
