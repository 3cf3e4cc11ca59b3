"""Sample-quality metrics through torch-fidelity: Inception FID/KID/PR and an offline domain-feature FD.

docs/paper.md section 1 (ablation protocol [paper]): every design step is scored by FID. Inception FID needs
torch-fidelity's Inception weights (downloaded, or a local file via `--fid-weights`). Where neither is there
(offline, as on the proxy machines), a small classifier trained once on the dataset itself is registered with
torch-fidelity as a feature extractor and the same Frechet distance, KID and precision/recall are computed in
its feature space. Those numbers are reported under their own names (`fd_domain`, `kid_domain`, ...), never as
`fid`, so tables never mix extractors. Reference statistics are cached per (dataset, split, resolution,
extractor) by torch-fidelity's own cache, in our cache folder.

No code from a file: torch-fidelity reads its Inception weights and its cached statistics with
`torch.load(weights_only=False)`, which runs whatever a pickle asks. So nothing reaches it unchecked: the
Inception weights (the `--fid-weights` file or the hub cache's) are read here with `weights_only=True` and
handed over as a copy this process wrote (`checked_weights`), and every cached file in the fidelity folder is
read with `weights_only=True` before torch-fidelity may load it (`check_fidelity_cache`). A file that holds
anything but tensors, numbers, strings and containers is refused with its name.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from search_space.errors import UserError

from search_space.cache import cache_dir
from search_space.outputs import atomic_write, save_torch
from .data import FlowData, file_sha256
from .weights import load_plain

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity 0.3/0.4's Inception v3 weights
# [choose] domain classifier training: 3 epochs of AdamW (one-cycle, peak 5e-3) reach ~93% held-out accuracy
# on MNIST-5k in under 10 CPU seconds; its 128-d pooled features are the FD space.
DOMAIN_EPOCHS = 3
DOMAIN_LR = 5e-3
DOMAIN_BATCH = 128
DOMAIN_WIDTH = 32
DOMAIN_FEATURES = "pool"
DOMAIN_VERSION = 2  # bump when DomainClassifier changes: it names the cached weights
DOMAIN_SEED = 0
PRC_NEIGHBORHOOD = 3  # Kynkaanniemi et al. 2019, torch-fidelity's default
KID_SUBSET_SIZE = 1000  # torch-fidelity's default, capped by the sample count
# [choose] an extractor is "clearly above chance" when its held-out accuracy is at least halfway from chance
# (the majority-class share) to perfect AND a one-sided binomial test rejects chance at 1%. MNIST-5k's
# classifier (~0.93 vs 0.10) passes; 3 classes with 4 held-out images (0.33 vs 0.33) does not.
EXTRACTOR_MIN_GAIN = 0.5
EXTRACTOR_ALPHA = 0.01


class MetricError(UserError, RuntimeError):
    """A metric cannot be computed (e.g. Inception weights unavailable); the message says how to fix it."""


class DomainClassifier(nn.Module):
    """Three stride-2 conv stages (BatchNorm, SiLU) and a global pool; the pooled vector is the feature for FD."""

    def __init__(self, in_channels: int, num_classes: int, width: int = DOMAIN_WIDTH):
        super().__init__()
        w = width

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.SiLU())

        # Downsample from the first conv: a 32x32 digit costs ~2.5M multiply-adds, so training stays seconds.
        self.features = nn.Sequential(stage(in_channels, w, 2), stage(w, 2 * w, 2), stage(2 * w, 4 * w, 2))
        self.head = nn.Linear(4 * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def domain_classifier(data: FlowData) -> tuple[Path, dict]:
    """Path of the dataset's cached domain classifier (trained here the first time) and its record."""
    path = cache_dir("domain") / f"{data.name}-v{DOMAIN_VERSION}-w{DOMAIN_WIDTH}-e{DOMAIN_EPOCHS}.pt"
    if path.is_file():
        ckpt = torch.load(path, weights_only=True)
        return path, ckpt["record"]
    start = time.perf_counter()
    torch.manual_seed(DOMAIN_SEED)
    gen = torch.Generator().manual_seed(DOMAIN_SEED)
    x, y = data.domain_view(data.ref_x), data.ref_y
    model = DomainClassifier(x.shape[1], data.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=DOMAIN_LR)
    steps = max(1, DOMAIN_EPOCHS * len(y) // DOMAIN_BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, DOMAIN_LR, total_steps=steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (min(DOMAIN_BATCH, len(y)),), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(data.domain_view(data.val_x)).argmax(1) == data.val_y).float().mean())
    record = {"dataset": data.name, "val_accuracy": acc, "steps": steps, "seconds": time.perf_counter() - start,
              "in_channels": x.shape[1], "num_classes": data.num_classes, "width": DOMAIN_WIDTH}
    with atomic_write(path) as tmp:
        save_torch({"state_dict": model.state_dict(), "record": record}, tmp)
    return path, record


def _domain_extractor_class(weights: Path, record: dict):
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class DomainFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity wrapper: float model-space views in, (pooled features, logits) out."""

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = DomainClassifier(record["in_channels"], record["num_classes"], record["width"])
            self.net.load_state_dict(torch.load(weights, weights_only=True)["state_dict"])
            self.net.eval().requires_grad_(False)

        @staticmethod
        def get_provided_features_list():
            return (DOMAIN_FEATURES, "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return DOMAIN_FEATURES

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():  # only asked for when can_be_compiled() is True, which it never is
            raise NotImplementedError("the domain feature extractor is not compiled (can_be_compiled() is False)")

        def forward(self, x):
            feats = self.net.embed(x.float())
            out = {DOMAIN_FEATURES: feats, "logits": self.net.head(feats)}
            return tuple(out[name] for name in self.features_list)

    return DomainFeatureExtractor


def register_domain_extractor(data: FlowData) -> tuple[str, dict]:
    """Register (once per process) the dataset's domain extractor with torch-fidelity; returns its name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    weights, record = domain_classifier(data)
    # The weights' hash in the name: cached reference features die with the classifier that made them.
    name = f"domain-{data.name}-{file_sha256(weights)[:8]}"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, _domain_extractor_class(weights, record))
    return name, record


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def _numpy_array_globals() -> list:
    """What a plain numpy array needs to unpickle (torch-fidelity caches its FID statistics as numpy arrays):
    the array constructor and the array and dtype types, nothing that calls user code."""
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def _safe_load(path: Path, what: str) -> object:
    """`torch.load(weights_only=True)` of a file torch-fidelity would load unchecked (plain numpy arrays allowed);
    a file that needs more than tensors, arrays and containers (a pickle that imports or calls) is refused with
    its name."""
    return load_plain(path, what, MetricError, "torch-fidelity would unpickle it with code execution allowed. "
                      "Delete it (a cache file is recomputed) or pass the original file",
                      allow=tuple(_numpy_array_globals()))


_CHECKED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of the files checked in this process


def _check_once(path: Path, what: str) -> None:
    """`_safe_load` a file unless this version of it (size, mtime) was checked already in this process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CHECKED:
        _safe_load(path, what)
        _CHECKED.add(key)


def check_fidelity_cache(root: Path) -> None:
    """Read every cached file under torch-fidelity's cache root with `weights_only=True` (once per file version in
    this process) before torch-fidelity loads any of them with `weights_only=False`."""
    for path in sorted(root.glob("*.pt")):
        _check_once(path, "cached fidelity statistics")


def checked_weights(path: str | Path) -> str:
    """A copy of a weights file that torch-fidelity can load safely: the file read with `weights_only=True` and
    written back by this process (named by the source's sha256, so a file is copied once; the copy in the cache
    is itself checked before use, as anything in the cache could have been planted there)."""
    path = Path(path)
    out = cache_dir("fidelity-weights") / f"checked-{file_sha256(path)[:16]}-{path.name}"
    if out.is_file():
        _check_once(out, "checked copy of the Inception weights")
    else:
        state = _safe_load(path, "Inception weights")
        if not isinstance(state, dict):
            raise MetricError(f"Inception weights {path}: holds a {type(state).__name__}, not a state dict; it "
                              f"should be torch-fidelity's {INCEPTION_FILE}")
        with atomic_write(out) as tmp:
            save_torch(state, tmp)
    return str(out)


def _fidelity(input1: torch.Tensor, input2: torch.Tensor, extractor: str, ref_cache_name: str,
              **kwargs) -> dict:
    import torch_fidelity

    n = min(len(input1), len(input2))
    root = cache_dir("fidelity")
    check_fidelity_cache(root)
    return torch_fidelity.calculate_metrics(
        input1=_Tensors(input1), input2=_Tensors(input2), input2_cache_name=ref_cache_name,
        cache_root=str(root), feature_extractor=extractor, fid=True, kid=True, prc=True,
        kid_subset_size=min(KID_SUBSET_SIZE, n), prc_neighborhood=min(PRC_NEIGHBORHOOD, n - 1),
        cuda=torch.cuda.is_available(), verbose=False, save_cpu_ram=True, **kwargs)


def _rename(metrics: dict, suffix: str, distance: str) -> dict:
    """torch-fidelity's keys -> ours: plain names (fid, kid, ...) for Inception, `_domain` for the domain features."""
    tail = f"_{suffix}" if suffix else ""
    keys = {"frechet_inception_distance": distance, "kernel_inception_distance_mean": f"kid{tail}",
            "precision": f"precision{tail}", "recall": f"recall{tail}"}
    return {new: float(metrics[old]) for old, new in keys.items() if old in metrics}


def domain_metrics(samples: torch.Tensor, data: FlowData) -> dict:
    """fd_domain, kid_domain, precision_domain, recall_domain of model-space samples vs the training split."""
    name, record = register_domain_extractor(data)
    ref_cache = f"{data.name}-train-r{data.resolution}"  # + the extractor name, added by torch-fidelity
    metrics = _fidelity(data.domain_view(samples), data.domain_view(data.ref_x), name, ref_cache)
    out = _rename(metrics, "domain", "fd_domain")
    out["domain_classifier_val_accuracy"] = record["val_accuracy"]
    return out


def extractor_validity(record: dict, data: FlowData, num_samples: int) -> str | None:
    """None when domain metrics can mean something for this data and sample count, else the reason why not."""
    from scipy.stats import binomtest

    n_val = len(data.val_y)
    if n_val == 0:
        return "no held-out images to check the domain feature extractor on"
    chance = float(torch.bincount(data.val_y).max()) / n_val
    acc = float(record["val_accuracy"])
    hits = round(acc * n_val)
    p = binomtest(hits, n_val, chance, alternative="greater").pvalue if chance < 1 else 1.0
    if acc < chance + EXTRACTOR_MIN_GAIN * (1 - chance) or p >= EXTRACTOR_ALPHA:
        return (f"the domain feature extractor is not clearly above chance on held-out data (accuracy {acc:.2f} "
                f"on {n_val} images, chance {chance:.2f}, p = {p:.2g}); its FD/KID would mean nothing: use more "
                f"data per class")
    n_ref, dims = len(data.ref_y), DOMAIN_WIDTH * 4
    if n_ref < num_samples:
        return (f"the reference set has {n_ref} images, fewer than the {num_samples} samples; lower --samples "
                f"to at most {n_ref} or use more data")
    if min(n_ref, num_samples) <= dims:
        return (f"{min(n_ref, num_samples)} images are not more than the {dims} feature dimensions: the FD's "
                f"covariance is singular; use more than {dims} samples and reference images")
    return None


_FLOORS: dict[tuple, dict] = {}  # (extractor, data, resolution, n) -> floor: the same for every candidate


def domain_floor(data: FlowData, num_samples: int) -> dict:
    """The metric's noise floor: FD and KID of `num_samples` held-out REAL images against the reference set. A
    sample scoring near it is as close as this many images can show (lower values are noise). It depends on the
    data and the image count only, so it is computed once per process (a study asked for it every trial)."""
    n = min(num_samples, len(data.val_y))
    name, _ = register_domain_extractor(data)
    key = (name, data.name, data.resolution, n)
    if key not in _FLOORS:
        ref_cache = f"{data.name}-train-r{data.resolution}"
        metrics = _fidelity(data.domain_view(data.val_x[:n]), data.domain_view(data.ref_x), name, ref_cache)
        out = _rename(metrics, "domain", "fd_domain")
        _FLOORS[key] = {"fd_domain_floor": out["fd_domain"], "kid_domain_floor": out["kid_domain"], "floor_images": n}
    return dict(_FLOORS[key])


def inception_weights(fid_weights: str | None, download: bool) -> str | None:
    """Local Inception weights, checked (`checked_weights`): the flag, else torch-fidelity's hub cache; None when
    only a download would do."""
    if fid_weights:
        if not Path(fid_weights).is_file():
            raise MetricError(f"--fid-weights {fid_weights}: no such file; it should be {INCEPTION_FILE}")
        return checked_weights(fid_weights)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return checked_weights(cached)
    if not download:
        return None
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
        torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=False)
    except Exception as e:  # any network failure: say which file and which flag
        raise MetricError(f"Inception weights {INCEPTION_FILE} are not in {cached.parent} and the download failed "
                          f"({type(e).__name__}); download them elsewhere and pass --fid-weights PATH, or use "
                          f"--fid off to report only fd_domain") from None
    return checked_weights(cached)


def inception_metrics(samples: torch.Tensor, data: FlowData, weights: str, vae: nn.Module | None = None,
                      batch: int = 100) -> dict:
    """fid, kid, precision, recall with torch-fidelity's Inception v3 on uint8 RGB images."""
    def images(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([data.to_images(x[i:i + batch], vae) for i in range(0, len(x), batch)])

    ref_cache = f"{data.name}-train-r{data.resolution}"
    metrics = _fidelity(images(samples), images(data.ref_x), "inception-v3-compat", ref_cache,
                        feature_extractor_weights_path=weights)
    return _rename(metrics, "", "fid")
