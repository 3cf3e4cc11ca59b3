"""No code from a file through torch-fidelity (training/fidelity.py): it unpickles its Inception weights and its
cached statistics with `weights_only=False`. A payload planted as `--fid-weights`, in the hub cache, in the
fidelity cache or as the checked copy must not run, and the error names the file; a real state dict passes."""
from pathlib import Path

import pytest
import torch

from search_space.cache import CACHE_ENV
from training import fidelity
from training.fidelity import INCEPTION_FILE, MetricError, check_fidelity_cache, inception_weights
from tests.payloads import Payload


def _plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": Payload(marker)}, path)  # torch's own format: what torch.load reads
    assert not marker.exists()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    fidelity._CHECKED.clear()
    return tmp_path / "cache"


def test_the_payload_is_live_when_unpickled_unchecked(tmp_path):
    """The control: the planted file does run code when loaded as torch-fidelity loads it."""
    marker = tmp_path / "ran"
    torch.load(_plant(tmp_path / "p.pth", marker), weights_only=False)
    assert marker.exists()


def test_a_payload_as_fid_weights_does_not_run_and_is_named(tmp_path, cache):
    marker = tmp_path / "ran"
    bad = _plant(tmp_path / "evil.pth", marker)
    with pytest.raises(MetricError, match=r"Inception weights .*evil\.pth is not a plain tensor file"):
        inception_weights(str(bad), download=False)
    assert not marker.exists()


def test_a_payload_in_the_hub_cache_does_not_run(tmp_path, cache):
    marker = tmp_path / "ran"
    bad = _plant(tmp_path / "hub" / "checkpoints" / INCEPTION_FILE, marker)
    with pytest.raises(MetricError, match=INCEPTION_FILE):
        inception_weights(None, download=False)
    assert not marker.exists() and bad.is_file()


def test_a_payload_in_the_fidelity_cache_stops_the_metric_before_torch_fidelity_loads_it(tmp_path, cache,
                                                                                         monkeypatch):
    import torch_fidelity
    marker = tmp_path / "ran"
    _plant(cache / "fidelity" / "mnist5k-train-r32-domain-features.pt", marker)
    called = []
    monkeypatch.setattr(torch_fidelity, "calculate_metrics", lambda **kw: called.append(kw) or {})
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(MetricError, match=r"cached fidelity statistics .*domain-features\.pt .*Delete it"):
        fidelity._fidelity(x, x, "domain", "mnist5k-train-r32")
    assert not marker.exists() and not called
    (cache / "fidelity" / "mnist5k-train-r32-domain-features.pt").unlink()
    torch.save({"mu": torch.zeros(3)}, cache / "fidelity" / "ok.pt")  # plain tensors pass
    fidelity._fidelity(x, x, "domain", "mnist5k-train-r32")
    assert called and called[0]["cache_root"] == str(cache / "fidelity")


def test_real_weights_pass_as_a_checked_copy_and_a_planted_copy_is_refused(tmp_path, cache):
    good = tmp_path / INCEPTION_FILE
    state = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.zeros(4)}
    torch.save(state, good)
    copy = Path(inception_weights(str(good), download=False))
    assert copy != good and copy.parent == cache / "fidelity-weights"
    loaded = torch.load(copy, weights_only=False)  # as torch-fidelity loads it
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert inception_weights(str(good), download=False) == str(copy)  # copied once
    # a payload planted under the copy's name (anyone who can write the cache could) is refused too
    marker = tmp_path / "ran"
    fidelity._CHECKED.clear()
    _plant(copy, marker)
    with pytest.raises(MetricError, match="checked copy of the Inception weights"):
        inception_weights(str(good), download=False)
    assert not marker.exists()


def test_a_weights_file_that_is_not_a_state_dict_is_refused(tmp_path, cache):
    odd = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], odd)
    with pytest.raises(MetricError, match="holds a list, not a state dict"):
        inception_weights(str(odd), download=False)
    check_fidelity_cache(cache / "fidelity")  # an empty cache is fine


def test_numpy_statistics_pass_and_a_payload_inside_an_object_array_does_not(tmp_path, cache):
    import numpy as np
    root = cache / "fidelity"
    root.mkdir(parents=True)
    torch.save({"mu": np.zeros(3), "sigma": np.eye(3, dtype=np.float32)}, root / "stat-fid.pt")  # as torch-fidelity
    check_fidelity_cache(root)
    marker = tmp_path / "ran"
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(marker)
    torch.save({"mu": arr}, root / "stat-evil.pt")
    with pytest.raises(MetricError, match="stat-evil.pt"):
        check_fidelity_cache(root)
    assert not marker.exists()
