"""Data layer: MNIST-5k, ImageFolder errors, latent encoding (tiny random AutoencoderKL), shards, text cache."""
import json

import pytest
import torch

from training.data import (DataError, LatentShards, encode_latents, imagenet_classes, load_data, load_image_folder,
                           load_mnist5k, scan_image_folder)


def _png(path, seed, size=(20, 24)):
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "hot_dog"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            _png(root / name / f"{i}.png", seed=10 * c + i)
    (root / "cat" / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture
def tiny_vae(tmp_path):
    """A randomly initialised AutoencoderKL (f=2, 4 channels) standing in for the SD3 VAE."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.5, shift_factor=0.1)
    path = tmp_path / "vae"
    vae.save_pretrained(path)
    return path


def test_mnist5k_split_and_range():
    data = load_mnist5k()
    assert data.num_classes == 10 and (len(data.train_y), len(data.val_y)) == (4500, 500)
    assert data.train_x.shape[1:] == (4, 16, 16)  # 1x32x32 space-to-depth by 2
    assert data.domain_view(data.val_x).shape[1:] == (1, 32, 32)
    assert torch.bincount(data.val_y).tolist() == [50] * 10
    assert data.train_x.min() == -1 and data.train_x.max() == 1
    again = load_mnist5k()
    assert torch.equal(again.val_y, data.val_y) and torch.equal(again.val_x, data.val_x)
    images = data.to_images(data.val_x[:2])
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 32, 32)


def test_imagenet_class_list_is_shipped():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes["n01440764"] == "tench" and classes["n15075141"] == "toilet tissue"


def test_image_folder_bad_inputs(tmp_path, image_folder):
    with pytest.raises(DataError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_image_folder(tmp_path / "flat")
    (image_folder / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no images"):
        scan_image_folder(image_folder)
    (image_folder / "empty").rmdir()
    with pytest.raises(DataError, match="not an ImageNet-1K synset"):
        scan_image_folder(image_folder, imagenet=True)
    with pytest.raises(DataError, match="unknown --data"):
        load_data("cifar")


def test_image_folder_skips_and_counts_corrupt_files(image_folder):
    data = load_image_folder(image_folder, resolution=16)
    assert data.info["skipped"] == 1 and data.info["skipped_files"][0].endswith("broken.png")
    assert data.class_names == ["cat", "hot dog"]
    assert data.train_count + len(data.val_y) == 12
    assert data.train_x.shape[1:] == (12, 8, 8)  # 3x16x16 space-to-depth by 2


def test_imagenet_folder_uses_shipped_names(tmp_path):
    root = tmp_path / "imagenet"
    for synset in ("n01440764", "n01443537"):
        (root / synset).mkdir(parents=True)
        for i in range(2):
            _png(root / synset / f"{i}.JPEG", seed=i)
    data = load_data(f"imagenet:{root}", resolution=8)
    assert data.class_names == ["tench", "goldfish"]


def test_encode_latents_manifest_resume_and_shard_checks(tmp_path, image_folder, tiny_vae):
    out = tmp_path / "latents"
    manifest = encode_latents(f"folder:{image_folder}", tiny_vae, out, resolution=16, shard_size=5,
                              batch_size=4, device="cpu", progress=False)
    assert manifest["complete"] and manifest["count"] == 12 and manifest["skipped"] == 1
    assert len(manifest["shards"]) == 3 and manifest["latent_channels"] == 4
    assert (manifest["scaling_factor"], manifest["shift_factor"]) == (0.5, 0.1)
    assert manifest["vae"].startswith("vae@") and manifest["resolution"] == 16
    data = load_data(f"latents:{out}")
    assert data.kind == "latent" and (data.channels, data.size) == (4, 8)
    assert data.train_count + len(data.val_y) == 12 and data.class_names == ["cat", "hot dog"]
    x, y = next(data.batches(4, torch.Generator().manual_seed(0)))
    assert x.shape == (4, 4, 8, 8) and y.shape == (4,)

    # Resume: an interrupted run (last shard gone, manifest incomplete) re-encodes only what is missing.
    first = (out / "shard-00000.safetensors").stat().st_mtime_ns
    (out / "shard-00002.safetensors").unlink()
    m = json.loads((out / "manifest.json").read_text())
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="interrupted"):
        load_data(f"latents:{out}")
    again = encode_latents(f"folder:{image_folder}", tiny_vae, out, resolution=16, shard_size=5, batch_size=4,
                           device="cpu", progress=False)
    assert again["checksum"] == manifest["checksum"]
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first

    # A different resolution into the same folder is refused.
    with pytest.raises(DataError, match="resolution"):
        encode_latents(f"folder:{image_folder}", tiny_vae, out, resolution=32, shard_size=5, progress=False)


def test_shard_from_another_vae_is_rejected(tmp_path, image_folder, tiny_vae):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "latents"
    encode_latents(f"folder:{image_folder}", tiny_vae, out, resolution=16, shard_size=6, progress=False)
    shard = out / "shard-00001.safetensors"
    save_file(load_file(str(shard)), str(shard), metadata={"vae": "sd3-vae@0123456789ab"})
    with pytest.raises(DataError, match="encoded with VAE 'sd3-vae@0123456789ab' but the manifest says"):
        LatentShards(out)
    with pytest.raises(DataError, match="no manifest.json"):
        LatentShards(tmp_path)


def test_an_all_corrupt_folder_is_refused_and_never_marked_complete(tmp_path, tiny_vae):
    root = tmp_path / "corrupt" / "cat"
    root.mkdir(parents=True)
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"not a png at all")
    out = tmp_path / "latents"
    with pytest.raises(DataError, match="no readable image .* all 3 file\\(s\\) failed to load"):
        encode_latents(f"folder:{root.parent}", tiny_vae, out, resolution=16, shard_size=5, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and sum(s["count"] for s in manifest["shards"]) == 0
