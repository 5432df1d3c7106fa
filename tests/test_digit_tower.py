"""The digit toys' pretrained image tower (sgm/modules/encoders/digit_tower.py): a location-free description
of the conditioning digit, in the cross-attention slot SVD's CLIP tower fills."""
import numpy as np
import torch

from sgm.data.digits import load_digits_split
from sgm.data.moving_digits import render_clip
from sgm.modules.encoders.digit_tower import DigitImageTower
from sgm.modules.encoders.modules import FrozenOpenCLIPImagePredictionEmbedder


def _canvas(digit: np.ndarray, x: int, y: int) -> torch.Tensor:
    return torch.from_numpy(render_clip(digit, [x], [y], 16)[0]).repeat(3, 1, 1)  # (3, 16, 16)


def test_the_embedding_names_the_digit_wherever_it_stands():
    images, labels = load_digits_split("heldout")
    tower = DigitImageTower().eval()
    a = torch.stack([_canvas(images[i], 0, 0) for i in range(6)])
    b = torch.stack([_canvas(images[i], 7, 5) for i in range(6)])
    za, zb = tower(a), tower(b)
    assert za.shape == (6, 128) and torch.isfinite(za).all()
    torch.testing.assert_close(za, zb)  # the same digit elsewhere on the canvas: the same embedding
    torch.testing.assert_close(za.mean(dim=1), torch.zeros(6), atol=1e-5, rtol=0)  # layer-normalised
    # different digits are told apart: each is nearest to itself among the six
    dist = torch.cdist(za, zb)
    assert torch.equal(dist.argmin(dim=1), torch.arange(6))


def test_it_fills_the_clip_slot_of_svds_image_embedder_frozen():
    images, _ = load_digits_split("heldout")
    embedder = FrozenOpenCLIPImagePredictionEmbedder(
        open_clip_embedding_config={"target": "sgm.modules.encoders.digit_tower.DigitImageTower"},
        n_cond_frames=1, n_copies=1)
    x = torch.stack([_canvas(images[i], 3, 2) for i in range(4)]).requires_grad_(True)
    z = embedder(x)
    assert z.shape == (4, 1, 128)  # (b, n_cond_frames, D): the crossattn context
    assert not any(p.requires_grad for p in embedder.parameters())  # frozen weights
    (grad,) = torch.autograd.grad(z.sum(), x)  # differentiable in the image, like CLIP
    assert grad.abs().sum() > 0
