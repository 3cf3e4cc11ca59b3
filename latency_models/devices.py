"""Device names: the chips the workbench knows, the phones that carry them, and which chips have a profile.

Plain Python (no numpy, no fitted models), so a study file's `[target] device` is checked when it loads without
importing the predictors (`study status` starts at once; docs/architecture.md). profiles.py re-exports all of it.
"""
from __future__ import annotations

import re
from pathlib import Path

from search_space.errors import SpecError

PROFILE_DIR = Path(__file__).parent / "profiles"

# Chips the workbench names; a chip without calibration data has no profile until someone measures it.
KNOWN_CHIPS = ("a13", "a14", "a15", "a16", "a17pro", "a18pro", "m1", "m2")
# Phone / tablet -> chip (Apple's published specifications of each model).
ALIASES = {
    "iphone11": "a13", "iphone11pro": "a13", "iphone11promax": "a13", "iphonese2": "a13",
    "iphone12mini": "a14", "iphone12": "a14", "iphone12pro": "a14", "iphone12promax": "a14",
    "iphone13mini": "a15", "iphone13": "a15", "iphone13pro": "a15", "iphone13promax": "a15",
    "iphone14": "a15", "iphone14plus": "a15", "iphonese3": "a15",
    "iphone14pro": "a16", "iphone14promax": "a16", "iphone15": "a16", "iphone15plus": "a16",
    "iphone15pro": "a17pro", "iphone15promax": "a17pro",
    "iphone16pro": "a18pro", "iphone16promax": "a18pro",
    "ipadprom1": "m1", "ipadairm1": "m1", "macbookairm1": "m1", "ipadprom2": "m2", "ipadairm2": "m2",
    "macbookairm2": "m2",
}


class UnknownDevice(SpecError):
    """A device name with no profile; the message lists the known devices."""


def normalize(name: str) -> str:
    """"iPhone 15 Pro" -> "iphone15pro", "A17 Pro" -> "a17pro", "iPad Pro (M1)" -> "ipadprom1"."""
    return re.sub(r"[^a-z0-9]+", "", name.lower().replace("bionic", ""))


def available_chips(profile_dir: Path | None = None) -> list[str]:
    d = Path(profile_dir or PROFILE_DIR)
    return sorted(p.stem for p in d.glob("*.json"))


# What a new chip needs so that both models can be fitted and validated on it: three small families (the
# chip's scale and dispatch regime) and diffusion-scale models (the roofline's compute / memory regime).
MEASUREMENT_PLAN = ("torchvision resnet50 and mobilenet_v2 at 1x3x224x224, timm fastvit_t8 at 1x3x256x256, and "
                    "the presets fig3-a, fig3-c2 and snapgen-decoder at latent 128 (`pocketdiff export coreml "
                    "NAME --latent 128`), compute units CPU_AND_NE, random non-zero weights")


def what_to_measure(chip: str) -> str:
    why = ("no published Neural Engine latency of a model we can rebuild exists for it (the one public A18 Pro "
           "figure is a zero-weight conv benchmark, and the chip skips zero weights)" if chip == "a18pro" else
           "no calibration data")
    return (f"{why}. To add it, time on a device with that chip: {MEASUREMENT_PLAN}; then `pocketdiff latency "
            f"import FILE.csv` and `pocketdiff latency fit --measurements STORE`.")


def resolve_device(name: str, profile_dir: Path | None = None) -> str:
    """Chip name of a device or chip; raises UnknownDevice listing the known ones."""
    key = normalize(name)
    chip = ALIASES.get(key, key)
    have = available_chips(profile_dir)
    if chip in have:
        return chip
    listing = ", ".join(have) or "none"
    aliases = ", ".join(sorted(a for a, c in ALIASES.items() if c in have))
    if chip in KNOWN_CHIPS:
        raise UnknownDevice(f"device {name!r} is chip {chip}, which has no profile yet: {what_to_measure(chip)} "
                            f"Profiles: {listing}")
    raise UnknownDevice(f"unknown device {name!r}; devices with a profile: {listing} (aliases: {aliases})")
