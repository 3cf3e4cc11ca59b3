"""The regime baselines (training/baselines.py): against an independent numpy computation on small random data
(per-image covariance solves, no eigendecomposition), through the real validation loss, on MNIST-5k, and cached."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from training import baselines as B
from training.baselines import CLASS_MEAN, CONSTANT, LINEAR, learned_fraction, regime_baselines
from training.data import FlowData
from training.validation import VAL_SEED, validation_loss

TOLERANCE = 1e-6


def _random_data(n_train: int, n_val: int, channels: int, size: int, classes: int = 3) -> FlowData:
    """Images with a class-dependent mean and correlated pixels, so the three baselines differ."""
    g = torch.Generator().manual_seed(7)
    d = channels * size * size
    mix = torch.randn(d, d, generator=g) / math.sqrt(d)
    centres = torch.randn(classes, d, generator=g)

    def draw(n):
        y = torch.arange(n) % classes
        x = centres[y] + torch.randn(n, d, generator=g) @ mix * 2
        return x.view(n, channels, size, size), y
    train_x, train_y = draw(n_train)
    val_x, val_y = draw(n_val)
    return FlowData(name="random", kind="latent", class_names=[f"c{i}" for i in range(classes)], resolution=size,
                    channels=channels, size=size, val_x=val_x, val_y=val_y, ref_x=train_x, ref_y=train_y,
                    train_x=train_x, train_y=train_y)


def _reference(data: FlowData, unbiased: bool = False) -> dict[str, float]:
    """The three baselines from their definitions, in numpy float64: the validation noise drawn as the validation
    loss draws it, the timestep grid from scipy's normal quantiles, and for each held-out image the linear-Gaussian
    predictor by a direct inverse of Cov(x_t). `unbiased`: Sigma over n - 1 (a near miss the test must see)."""
    from scipy.stats import norm

    x0 = data.val_x.double().flatten(1).numpy()
    noise = torch.randn(data.val_x.shape, generator=torch.Generator().manual_seed(VAL_SEED)).double().flatten(1).numpy()
    grid = 1 / (1 + np.exp(-norm.ppf((np.arange(8) + 0.5) / 8)))  # sigmoid of the logit-normal quantiles
    t = grid[np.arange(len(x0)) % 8]
    xt = (1 - t)[:, None] * x0 + t[:, None] * noise
    v = noise - x0
    train = data.train_x.double().flatten(1).numpy()
    labels, train_y = data.val_y.numpy(), data.train_y.numpy()
    mu = train.mean(0)
    sigma = np.cov(train, rowvar=False, bias=not unbiased)
    eye = np.eye(len(mu))
    constant = np.tile(-mu, (len(x0), 1))
    class_mean = np.stack([-train[train_y == c].mean(0) for c in labels])
    linear = np.stack([
        -mu + (ti * eye - (1 - ti) * sigma) @ np.linalg.inv((1 - ti) ** 2 * sigma + ti ** 2 * eye)
        @ (xi - (1 - ti) * mu) for ti, xi in zip(t, xt)])
    return {name: float(np.mean((pred - v) ** 2))
            for name, pred in ((CONSTANT, constant), (CLASS_MEAN, class_mean), (LINEAR, linear))}


@pytest.mark.parametrize("n_train,channels,size", [(60, 2, 4), (20, 2, 4)], ids=["more-images", "more-dims"])
def test_baselines_match_an_independent_numpy_computation(n_train, channels, size):
    """32 dimensions: 60 training images (every eigenvector) and 20 (Sigma of rank 19: its range from the Gram
    matrix, the rest at eigenvalue 0); 24 held-out images cover the 8 timesteps three times."""
    data = _random_data(n_train, 24, channels, size)
    ours, ref = B.compute_baselines(data), _reference(data)
    for name in (CONSTANT, CLASS_MEAN, LINEAR):
        assert ours[name] == pytest.approx(ref[name], abs=TOLERANCE), name
    assert ours[CLASS_MEAN] < ours[CONSTANT]
    if n_train > channels * size * size:  # with fewer images than dimensions Sigma overfits: no such promise
        assert ours[LINEAR] < ours[CLASS_MEAN]
    # the check is sharp: the unbiased covariance (1 / (n - 1)) already moves the linear-Gaussian loss past it
    assert abs(_reference(data, unbiased=True)[LINEAR] - ours[LINEAR]) > 10 * TOLERANCE


class _Predictor(nn.Module):
    """A fixed velocity predictor called as the UNet is (x_t, t * 1000, tokens, pooled, time ids); the test's
    conditioner hands the class labels through as the tokens."""

    def __init__(self, predict):
        super().__init__()
        self.predict = predict

    def forward(self, x, timestep, tokens, pooled, time_ids):
        return self.predict(x, timestep / 1000, tokens)


class _Labels:
    def __call__(self, labels):
        return labels, None, None


def test_baselines_are_the_validation_loss_of_the_same_predictors():
    """The baselines score exactly the validation loss's inputs: the three predictors run through
    `validation_loss` itself (float32 model outputs) give the same numbers."""
    data = _random_data(60, 24, 2, 4)
    ours = B.compute_baselines(data)
    train = data.train_x.double().flatten(1)
    mu = train.mean(0)
    means = torch.stack([train[data.train_y == c].mean(0) for c in range(3)])
    values, vectors = torch.linalg.eigh((train - mu).T @ (train - mu) / len(train))

    def linear(x, t, labels):
        tv = t.double()[:, None]
        z = x.flatten(1).double() - (1 - tv) * mu
        gain = (tv - (1 - tv) * values) / ((1 - tv) ** 2 * values + tv ** 2)
        return (-mu + ((z @ vectors) * gain) @ vectors.T).float().view_as(x)
    models = {CONSTANT: lambda x, t, labels: (-mu).float().view(1, *x.shape[1:]).expand_as(x),
              CLASS_MEAN: lambda x, t, labels: (-means[labels]).float().view_as(x), LINEAR: linear}
    for name, predict in models.items():
        loss = validation_loss(_Predictor(predict), _Labels(), data, torch.device("cpu"))
        assert loss == pytest.approx(ours[name], abs=TOLERANCE), name


def test_mnist_baselines_are_the_measured_ones():
    """mnist5k-p4 (500 held-out digits, 8x8x16): the numbers docs/quality.md quotes."""
    from training.data import load_data

    b = regime_baselines(load_data("mnist5k-p4"))
    assert b[CONSTANT] == pytest.approx(1.2078, abs=5e-4)
    assert b[CLASS_MEAN] == pytest.approx(1.1657, abs=5e-4)
    assert b[LINEAR] == pytest.approx(0.2724, abs=5e-4)


def test_learned_fraction():
    b = {CONSTANT: 1.2, CLASS_MEAN: 1.1, LINEAR: 0.2}
    assert learned_fraction(1.2, b) == 0.0 and learned_fraction(0.2, b) == 1.0
    assert learned_fraction(0.7, b) == pytest.approx(0.5) and learned_fraction(0.1, b) == pytest.approx(1.1)
    assert learned_fraction(None, b) is None and learned_fraction(float("nan"), b) is None
    assert learned_fraction(0.5, {CONSTANT: 1.0, CLASS_MEAN: 1.0, LINEAR: 1.0}) is None


def test_baselines_are_cached_per_regime(monkeypatch):
    data = _random_data(60, 24, 2, 4)
    first = regime_baselines(data)
    calls = []
    monkeypatch.setattr(B, "compute_baselines", lambda d, limit=None: calls.append(d) or {k: 0.0 for k in B.BASELINES})
    assert regime_baselines(data) == first and not calls  # served from the cache
    regime_baselines(data, limit=16)  # another protocol: computed
    other = _random_data(60, 24, 2, 4)
    other.train_x = other.train_x + 1e-3  # the same name, other tensors: computed
    regime_baselines(other)
    assert len(calls) == 2
    assert B.regime_key(data, 500) != B.regime_key(other, 500) != B.regime_key(other, 16)


def test_class_gaussian_loss_matches_per_class_direct_inverses():
    """The class-conditional Gaussian (each class its own mean and covariance): 100 training images per class in
    32 dimensions, each held-out image predicted by a direct inverse of its class's Cov(x_t); below the
    unconditional linear-Gaussian baseline, and sharp (the unbiased covariance already misses)."""
    from scipy.stats import norm

    data = _random_data(300, 24, 2, 4)
    x0 = data.val_x.double().flatten(1).numpy()
    noise = torch.randn(data.val_x.shape, generator=torch.Generator().manual_seed(VAL_SEED)).double().flatten(1).numpy()
    t = (1 / (1 + np.exp(-norm.ppf((np.arange(8) + 0.5) / 8))))[np.arange(len(x0)) % 8]
    xt, v = (1 - t)[:, None] * x0 + t[:, None] * noise, noise - x0
    train, train_y = data.train_x.double().flatten(1).numpy(), data.train_y.numpy()
    eye = np.eye(train.shape[1])

    def reference(bias: bool) -> float:
        preds = []
        for ti, xi, c in zip(t, xt, data.val_y.numpy()):
            own = train[train_y == c]
            mu, sigma = own.mean(0), np.cov(own, rowvar=False, bias=bias)
            preds.append(-mu + (ti * eye - (1 - ti) * sigma) @ np.linalg.inv((1 - ti) ** 2 * sigma + ti ** 2 * eye)
                         @ (xi - (1 - ti) * mu))
        return float(np.mean((np.stack(preds) - v) ** 2))
    ours = B.class_gaussian_loss(data)
    assert ours == pytest.approx(reference(bias=True), abs=TOLERANCE)
    assert abs(reference(bias=False) - ours) > 10 * TOLERANCE
    assert ours < B.compute_baselines(data)[LINEAR]


def test_mnist_class_gaussian_loss():
    """mnist5k (16x16x4) and mnist5k-p4: about 0.225 and 0.229, the bar a reference run must clear
    (docs/quality.md)."""
    from training.data import load_data

    assert B.class_gaussian_loss(load_data("mnist5k")) == pytest.approx(0.2255, abs=5e-4)
    assert B.class_gaussian_loss(load_data("mnist5k-p4")) == pytest.approx(0.2292, abs=5e-4)
