"""The regime baselines: what the validation loss is worth without learning, and how much of the learnable part a
run learned (docs/quality.md, baselines and the learned fraction).

Three predictors that need no training, scored on exactly the inputs of the validation loss
(training/validation.py: the held-out images, their fixed noise and grid timesteps; the loss is flow_loss's mean
squared error over every element):
- constant: v_hat = -mean training image (reads neither x_t, t nor the prompt);
- class mean: v_hat = -mean training image of the label's class (reads only the prompt);
- linear-Gaussian: per t, the best affine predictor of v from x_t when x_0 ~ N(mu, Sigma), the training set's
  mean and covariance, and eps ~ N(0, I): with x_t = (1 - t) x_0 + t eps and v = eps - x_0,
      v_hat = E[v] + Cov(v, x_t) Cov(x_t)^-1 (x_t - E[x_t]),
      E[v] = -mu,  E[x_t] = (1 - t) mu,  Cov(x_t) = (1 - t)^2 Sigma + t^2 I,  Cov(v, x_t) = t I - (1 - t) Sigma.
  Both covariances share Sigma's eigenvectors, so the gain is a function of each eigenvalue lambda:
      g(lambda) = (t - (1 - t) lambda) / ((1 - t)^2 lambda + t^2),   and 1 / t off Sigma's range.
  A model that has learned no more than second-order pixel statistics scores this.

`learned_fraction(val) = (constant - val) / (constant - linear)`: 0 at the constant predictor, 1 at the
linear-Gaussian optimum, above 1 past it. Every quality record carries the three losses and the fraction
(evaluators/quality.py); studies gate their rungs on it (studies/halving.py).

The baselines are computed once per data regime, in float64, and cached under the cache root
(search_space/cache.py), keyed by the data's name, a hash of its tensors and the validation protocol. Torch is
imported inside the functions, so the field names and `learned_fraction` load without it.
"""
from __future__ import annotations

import hashlib
import json
import math

CONSTANT, CLASS_MEAN, LINEAR = "val_loss_constant", "val_loss_class_mean", "val_loss_linear"
BASELINES = (CONSTANT, CLASS_MEAN, LINEAR)  # the record fields, in the order they are printed
LEARNED_FRACTION = "learned_fraction"
# Bump when the baselines' numbers change for the same data and protocol (it is part of the cache key).
METHOD_VERSION = 1


def learned_fraction(val_loss: float | None, baselines: dict) -> float | None:
    """(constant - val) / (constant - linear-Gaussian); None without a val loss or when the two baselines meet
    (a regime with nothing to learn beyond the mean)."""
    if val_loss is None or not math.isfinite(val_loss):
        return None
    span = baselines[CONSTANT] - baselines[LINEAR]
    return (baselines[CONSTANT] - val_loss) / span if span > 0 else None


def _training_set(data):
    """The training images and labels the baselines are fitted on: the whole in-memory training set, or for
    streamed latents the reference set (the first training latents, up to training/data.py's REFERENCE_MAX)."""
    if data.train_x is not None:
        return data.train_x, data.train_y
    return data.ref_x, data.ref_y


def _protocol(limit: int) -> dict:
    from .flow import LOGIT_NORMAL_MEAN, LOGIT_NORMAL_STD
    from .validation import VAL_SEED, VAL_TIMESTEPS

    return {"limit": limit, "noise_seed": VAL_SEED, "timesteps": VAL_TIMESTEPS,
            "logit_normal": [LOGIT_NORMAL_MEAN, LOGIT_NORMAL_STD], "method": METHOD_VERSION}


def regime_key(data, limit: int) -> str:
    """The cache key of one data regime: its name, a hash of its training and held-out tensors, the protocol."""
    import torch

    h = hashlib.sha256()
    train_x, train_y = _training_set(data)
    for tensor in (train_x, train_y, data.val_x[:limit], data.val_y[:limit]):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return json.dumps({"data": data.name, "tensors": h.hexdigest()[:24], **_protocol(limit)}, sort_keys=True)


def regime_baselines(data, limit: int | None = None) -> dict[str, float]:
    """The three baseline val losses of `data` (cached per regime): {val_loss_constant, val_loss_class_mean,
    val_loss_linear}."""
    from search_space.cache import cache_dir
    from search_space.outputs import atomic_write

    from .validation import VAL_MAX

    limit = VAL_MAX if limit is None else limit
    key = regime_key(data, limit)
    path = cache_dir("baselines") / f"{data.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return {k: float(stored[k]) for k in BASELINES}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass  # a damaged entry is recomputed
    values = compute_baselines(data, limit)
    with atomic_write(path) as tmp:  # a concurrent worker reads the old file or the new one, never half of it
        tmp.write_text(json.dumps({"key": key, **values}, indent=1))
    return values


def compute_baselines(data, limit: int | None = None) -> dict[str, float]:
    """The three baselines, computed (no cache): float64 throughout, Sigma's eigendecomposition done once."""
    import numpy as np

    from .flow import interpolate, velocity_target
    from .validation import VAL_MAX, validation_inputs

    limit = VAL_MAX if limit is None else limit
    x0, labels, noise, t = validation_inputs(data, limit)
    # the model's input and target exactly as validation_loss forms them (float32), then float64
    xt = interpolate(x0, noise, t).flatten(1).double().numpy()
    v = velocity_target(x0, noise).flatten(1).double().numpy()
    t, labels = t.double().numpy(), labels.numpy()
    train_x, train_y = _training_set(data)
    train = train_x.flatten(1).double().numpy()
    train_y = train_y.numpy()
    mu = train.mean(0)

    class_means = _class_means(train, train_y, mu, max(data.num_classes, int(labels.max(initial=0)) + 1))
    linear = _gaussian_predictor(xt, t, np.broadcast_to(mu, xt.shape), *_covariance_eigen(train - mu))

    def loss(pred: np.ndarray) -> float:
        return float(np.mean((pred - v) ** 2))  # flow_loss: the mean over every element of every image

    return {CONSTANT: loss(np.broadcast_to(-mu, v.shape)), CLASS_MEAN: loss(-class_means[labels]),
            LINEAR: loss(linear)}


def class_gaussian_loss(data, limit: int | None = None) -> float:
    """The validation loss of the class-conditional Gaussian predictor: x_0 | class ~ N(mu_class, Sigma_class),
    each class's own mean and covariance from the training set (with fewer images than dimensions, zero variance
    off the span of its images); per held-out image the linear-Gaussian formula of its class. A model that
    knows the class and each class's second-order pixel statistics scores this; a reference run that has learned
    more than those is below it (docs/quality.md)."""
    import numpy as np

    from .flow import interpolate, velocity_target
    from .validation import VAL_MAX, validation_inputs

    x0, labels, noise, t = validation_inputs(data, VAL_MAX if limit is None else limit)
    xt = interpolate(x0, noise, t).flatten(1).double().numpy()
    v = velocity_target(x0, noise).flatten(1).double().numpy()
    train_x, train_y = _training_set(data)
    train, train_y = train_x.flatten(1).double().numpy(), train_y.numpy()
    labels = labels.numpy()
    t = t.double().numpy()
    pred = np.broadcast_to(-train.mean(0), v.shape).copy()  # a class without training images: the constant
    for c in np.unique(labels):
        rows, own = labels == c, train[train_y == c]
        if len(own):
            mean = own.mean(0)
            pred[rows] = _gaussian_predictor(xt[rows], t[rows], np.broadcast_to(mean, xt[rows].shape),
                                             *_covariance_eigen(own - mean))
    return float(np.mean((pred - v) ** 2))


def _class_means(train, train_y, mu, classes: int):
    import numpy as np

    return np.stack([train[train_y == c].mean(0) if (train_y == c).any() else mu  # no image: the mean
                     for c in range(classes)])


def _gaussian_predictor(xt, t, means, eigvals, basis):
    """Per t, E[v | x_t] when x_0 ~ N(means row, Sigma) (Sigma = basis diag(eigvals) basis^T), eps ~ N(0, I)."""
    import numpy as np

    pred = np.empty_like(xt)
    for tv in np.unique(t):
        rows = t == tv
        z = xt[rows] - (1 - tv) * means[rows]
        gain = (tv - (1 - tv) * eigvals) / ((1 - tv) ** 2 * eigvals + tv ** 2)
        # off Sigma's range (eigenvalue 0) the gain is 1 / t; on it, g(lambda)
        pred[rows] = -means[rows] + z / tv + ((z @ basis) * (gain - 1 / tv)) @ basis.T
    return pred


def _covariance_eigen(centred):
    """(eigenvalues, eigenvectors as columns) of Sigma = X^T X / n, the training set's own covariance, for the
    centred training set X (n images, d dimensions): every eigenvector when n >= d; else, from the n x n Gram
    matrix, the eigenvectors that span Sigma's range (every other direction has eigenvalue 0)."""
    import numpy as np

    n, d = centred.shape
    if n >= d:
        eigvals, basis = np.linalg.eigh(centred.T @ centred / n)
    else:
        eigvals, w = np.linalg.eigh(centred @ centred.T / n)
        keep = eigvals > eigvals.max(initial=0.0) * 1e-12
        eigvals, w = eigvals[keep], w[:, keep]
        basis = centred.T @ w / np.sqrt(n * eigvals)  # unit eigenvectors of Sigma from those of the Gram matrix
    return np.clip(eigvals, 0.0, None), basis
