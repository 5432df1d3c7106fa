"""Moving-digits clip metrics: crops find the digit, real clips score well, broken clips do not."""
import sgm  # noqa: F401  (first, as everywhere)

import pytest
import torch
import torch.nn.functional as F

from sgm.data.moving_digits import MovingDigits
from sgm.metrics.moving_digits import digit_crops, evaluate_clips, heldout_clips, majority_agreement

N = 128  # clips; the module docstring's reference values are at 256
SHUFFLE = [0, 3, 1, 7, 2, 6, 5, 4]  # frame order of the shuffled clips (frame 0 kept)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors: one thread (torch and numpy's BLAS) is many times faster on a busy 2-core machine."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def heldout():
    clips, labels, speeds, batch = heldout_clips(N)
    return clips, labels, speeds, batch["cond_frames_without_noise"]


@pytest.fixture(scope="module")
def real_scores(heldout):
    clips, labels, speeds, cond = heldout
    return evaluate_clips(clips, labels, speeds, cond=cond)


def shift_x(digit: torch.Tensor, dx: int) -> torch.Tensor:
    """(8, 8) digit moved dx px to the right inside its 8x8 frame, background -1 coming in."""
    padded = F.pad(digit, (1, 1), value=-1.0)  # (8, 10)
    return padded[:, 1 - dx:9 - dx]


# --- crops ------------------------------------------------------------------------------------


def test_crops_recover_the_pasted_digits(heldout):
    clips = heldout[0]
    digits = torch.from_numpy(MovingDigits("heldout").images[:N])  # (N, 8, 8)
    crops = digit_crops(clips).view(N, 8, 8, 8)  # (N, t, 8, 8)
    frame_ink = (clips.mean(dim=2) + 1).sum(dim=(-2, -1))  # (N, t)
    torch.testing.assert_close((crops + 1).sum(dim=(-2, -1)), frame_ink)  # every crop holds all the ink
    column_ink = (digits + 1).sum(dim=1)  # (N, 8)
    cx = column_ink @ torch.arange(8.0) / column_ink.sum(dim=1)  # (N,) the digit's own centre of mass
    centred = (cx - 3.5).abs() < 0.5  # where the frame says unambiguously where the 8x8 image lies
    assert centred.float().mean() > 0.8
    assert torch.equal(crops[centred], digits[centred, None].expand(-1, 8, 8, 8))
    for i in torch.nonzero(~centred).flatten().tolist():  # the rest: the digit moved by one column
        for k in range(8):
            assert any(torch.equal(crops[i, k], shift_x(digits[i], dx)) for dx in (-1, 0, 1))


def test_crop_of_a_centred_digit_at_every_canvas_position():
    digit = torch.full((8, 8), -1.0)
    digit[:, 2:6] = torch.arange(1, 33.0).view(8, 4) / 16 - 1  # fills all rows; centre of mass x 3.6
    clips = torch.full((9, 9, 1, 1, 16, 16), -1.0)
    for y in range(9):
        for x in range(9):
            clips[y, x, 0, 0, y:y + 8, x:x + 8] = digit
    clips = clips.view(81, 1, 1, 16, 16).repeat(1, 2, 3, 1, 1)  # 81 clips of 2 RGB frames
    assert torch.equal(digit_crops(clips), digit.expand(162, 1, 8, 8))


# --- real clips and broken ones ----------------------------------------------------------------


def test_real_clips_score_well(real_scores):
    print("\nreal", real_scores)
    assert real_scores["frame_accuracy"] >= 0.95
    assert real_scores["identity_consistency"] >= 0.95
    assert real_scores["speed_error"] < 0.3  # reflections only
    assert real_scores["frame_fd"] < 15  # 7.4 at 128 clips, 2.0 at 256
    assert real_scores["first_frame_error"] == 0.0
    assert real_scores["n"] == N


def test_static_clips_do_not_move(heldout, real_scores):
    clips, labels, speeds, cond = heldout
    scores = evaluate_clips(clips[:, :1].repeat(1, 8, 1, 1, 1), labels, speeds, cond=cond)
    print("\nstatic", scores)
    assert scores["center_motion"] == 0.0 and scores["accel"] == 0.0
    assert scores["speed_error"] == pytest.approx(speeds.mean().item())  # every step misses the full speed
    assert scores["speed_error"] > 5 * real_scores["speed_error"]
    assert scores["frame_accuracy"] >= 0.95  # per-frame metrics cannot see missing motion


def test_noise_clips_score_badly(heldout, real_scores):
    clips, labels, speeds, cond = heldout
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    scores = evaluate_clips(noise, labels, speeds, cond=cond)
    print("\nnoise", scores)
    assert scores["frame_accuracy"] < 0.3
    assert scores["frame_fd"] > 10 * real_scores["frame_fd"] and scores["frame_fd"] > 100
    assert scores["first_frame_error"] > 0.5


def test_shuffled_frames_accelerate(heldout, real_scores):
    clips, labels, speeds, cond = heldout
    scores = evaluate_clips(clips[:, SHUFFLE], labels, speeds, cond=cond)
    print("\nshuffled", scores)
    assert scores["accel"] > 3 * real_scores["accel"]
    assert scores["speed_error"] > 3 * real_scores["speed_error"]
    assert scores["frame_accuracy"] == real_scores["frame_accuracy"]  # same frames, other order


# --- closed forms -------------------------------------------------------------------------------


def test_single_pixel_track_closed_form():
    clips = torch.full((1, 4, 1, 8, 8), -1.0)
    for k, x in enumerate([0, 1, 3, 6]):  # steps 1, 2, 3 px; second differences 1, 1
        clips[0, k, 0, 4, x] = 1.0
    scores = evaluate_clips(clips, [0], speeds=[2.0])
    assert scores["center_motion"] == pytest.approx(2.0)
    assert scores["speed_error"] == pytest.approx((1 + 0 + 1) / 3)
    assert scores["accel"] == pytest.approx(1.0)


def test_majority_agreement_ties_go_to_the_smaller_class():
    preds = torch.tensor([[1, 2, 2, 1], [3, 3, 3, 0]])  # majorities 1 (tie with 2) and 3
    assert majority_agreement(preds) == pytest.approx((2 + 3) / 8)


def test_missing_inputs_give_nan(heldout):
    clips, labels = heldout[0][:4, :2], heldout[1][:4]  # t = 2: no second difference either
    scores = evaluate_clips(clips, labels)
    assert all(scores[k] != scores[k] for k in ("speed_error", "first_frame_error", "accel"))


# --- errors -------------------------------------------------------------------------------------


def test_bad_shapes_name_the_argument(heldout):
    clips, labels, speeds, cond = heldout
    with pytest.raises(ValueError, match=r"clips must be .*got shape \(128, 3, 16, 16\)"):
        evaluate_clips(clips[:, 0], labels)
    with pytest.raises(ValueError, match=r"clips must be .*got shape \(2, 1, 3, 16, 16\)"):
        digit_crops(clips[:2, :1])
    with pytest.raises(ValueError, match=r"clips must be .*H>=8"):
        evaluate_clips(clips[..., :6, :6], labels)
    with pytest.raises(ValueError, match=r"labels must be \(4,\).*got shape \(128,\)"):
        evaluate_clips(clips[:4], labels)
    with pytest.raises(ValueError, match=r"speeds must be \(128,\).*got shape \(128, 1\)"):
        evaluate_clips(clips, labels, speeds[:, None])
    with pytest.raises(ValueError, match=r"cond must be .*got shape \(128, 1, 16, 16\)"):
        evaluate_clips(clips, labels, cond=cond[:, :1])
    with pytest.raises(ValueError, match=r"n must be in \[1, 359\]"):
        heldout_clips(1000)
