"""Digit-quality metrics: the Frechet distance, the committed classifier, and its training."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from sgm.data.digits import load_digits_split
from sgm.metrics.digits import (
    DEFAULT_WEIGHTS,
    DigitMetrics,
    frechet_distance,
    gaussian_frechet_distance,
    load_digit_classifier,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_digit_classifier.py"


@pytest.fixture(scope="module")
def metrics():
    return DigitMetrics()


@pytest.fixture(scope="module")
def heldout():
    return load_digits_split("heldout")


@pytest.fixture(scope="module")
def train():
    return load_digits_split("train")


def load_training_script():
    spec = importlib.util.spec_from_file_location("train_digit_classifier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the Frechet distance ---------------------------------------------------------------------


def test_frechet_distance_of_identical_samples_is_zero():
    feats = np.random.default_rng(0).standard_normal((500, 16))
    assert abs(frechet_distance(feats, feats)) < 1e-9


def test_frechet_distance_closed_form_diagonal_and_1d():
    # 1-D: (m_a - m_b)^2 + (s_a - s_b)^2
    assert gaussian_frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)
    # commuting (diagonal) covariances: ||dmu||^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert gaussian_frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_matches_sqrtm_for_full_covariances():
    rng = np.random.default_rng(1)
    m_a, m_b = rng.standard_normal((2, 6, 6))
    cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(6), m_b @ m_b.T
    mu_a, mu_b = rng.standard_normal((2, 6))
    reference = ((mu_a - mu_b) ** 2).sum() + np.trace(
        cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real
    )
    assert gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_of_samples_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal([0.0, 0.0], [1.0, 2.0], size=(40000, 2))
    b = rng.normal([1.0, -1.0], [3.0, 1.0], size=(40000, 2))
    expected = 1 + 1 + (1 - 3) ** 2 + (2 - 1) ** 2  # = 7
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_distance_needs_two_samples():
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))


# --- the committed classifier and the metrics on real and fake digits -------------------------


def test_classifier_is_frozen_and_cached():
    model = load_digit_classifier()
    assert model is load_digit_classifier(DEFAULT_WEIGHTS)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_heldout_accuracy_and_shuffled_labels(metrics, heldout):
    images, labels = heldout
    assert metrics.class_accuracy(images, labels) >= 0.97
    shuffled = np.random.default_rng(0).permutation(labels)
    assert abs(metrics.class_accuracy(images, shuffled) - 0.1) < 0.05


def test_fd_real_vs_real_small_and_real_vs_noise_or_blank_large(metrics, train, heldout):
    assert metrics.fid_vs_heldout(heldout[0]) < 1e-6  # the reference set itself
    subset = train[0][np.random.default_rng(0).choice(len(train[1]), 359, replace=False)]
    fd_real = metrics.fid_vs_heldout(subset)  # 3.4 at N = 359
    fd_all_train = metrics.fid_vs_heldout(train[0])  # 1.8 at N = 1438
    noise = torch.randn(359, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fd_noise = metrics.fid_vs_heldout(noise)  # ~200
    fd_blank = metrics.fid_vs_heldout(-torch.ones(359, 8, 8))  # ~600
    assert fd_all_train < fd_real < 8
    assert fd_noise > 25 * fd_real and fd_noise > 100
    assert fd_blank > 25 * fd_real and fd_blank > 100


def test_coverage_of_heldout_and_of_a_single_digit(metrics, heldout):
    images, labels = heldout
    coverage, entropy = metrics.class_coverage(images)
    assert coverage == 1.0 and entropy > 0.99
    coverage, entropy = metrics.class_coverage(images[labels == 0])
    assert coverage == pytest.approx(0.1) and entropy == 0.0


def test_evaluate_keys_shapes_and_clamping(metrics, heldout):
    images, labels = heldout
    x = torch.from_numpy(images[:64])
    out = metrics.evaluate(x[:, None], labels[:64])
    assert list(out) == ["accuracy", "fd", "coverage", "class_entropy", "n"] and out["n"] == 64
    assert all(type(v) in (int, float) for v in out.values())  # plain Python numbers for loggers
    assert metrics.evaluate(x, torch.from_numpy(labels[:64])) == out  # (N, 8, 8) and tensor labels
    assert math.isnan(metrics.evaluate(x)["accuracy"])
    single = metrics.evaluate(x[:1])
    assert math.isnan(single["fd"]) and single["coverage"] == 0.1 and single["n"] == 1
    too_bright = x * 3  # outside [-1, 1]; evaluated as if clamped
    fd = metrics.evaluate(too_bright)["fd"]
    assert fd == metrics.evaluate(too_bright.clamp(-1, 1))["fd"] and fd != metrics.evaluate(x)["fd"]


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 64), (4, 1, 16, 16), (8, 8)])
def test_wrong_shape_names_the_shape(metrics, shape):
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*" + re_shape(shape)):
        metrics.evaluate(torch.zeros(shape))


def re_shape(shape):
    return r"\(" + r", ".join(map(str, shape)) + r",?\)"


def test_label_count_mismatch(metrics, heldout):
    with pytest.raises(ValueError, match="labels of shape"):
        metrics.class_accuracy(heldout[0][:10], heldout[1][:9])


# --- the training script ----------------------------------------------------------------------


def test_training_is_deterministic():
    script = load_training_script()
    model_a, acc_a = script.train_classifier(epochs=2, seed=3)
    model_b, acc_b = script.train_classifier(epochs=2, seed=3)
    assert acc_a == acc_b
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name


def test_training_script_reproduces_the_committed_accuracy(metrics, heldout):
    """The default run (40 epochs, seed 0, ~5 s) reaches the accuracy of the committed weights."""
    from safetensors import safe_open

    model, acc = load_training_script().train_classifier()
    with safe_open(str(DEFAULT_WEIGHTS), "pt") as f:
        committed = float(f.metadata()["training"].rsplit(" ", 1)[1])
    assert acc >= 0.97 and abs(acc - committed) < 0.01
    agree = (DigitMetrics(model).predict(heldout[0]) == metrics.predict(heldout[0])).double().mean()
    assert agree > 0.97
