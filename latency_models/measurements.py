"""Measurement tables: the CSV schemas, validation and import, and the rebuild of each measured architecture.

Two schemas are read:
- `calibration`: published Core ML latencies as collected in data/calibration.csv (copied from the shared
  calibration set; every row carries its source_url and source_table) and data/large_models.csv (published
  latencies of diffusion-scale and other large models, same columns; data/README.md). Columns:
  CALIBRATION_COLUMNS.
- `measurement`: what `pocketdiff latency measure` writes and what other tools can be converted to.
  Columns: MEASUREMENT_COLUMNS (required) + MEASUREMENT_OPTIONAL.
Both become `Measurement` records; `arch` says how to rebuild the architecture for features
("torchvision:resnet50", "timm:fastvit_t8", "preset:snapgen-unet", "spec:path.json", "diffusers:sd21-unet",
"transformers:distilbert", "microbench:conv3x3-c128-l20"; archs.py rebuilds them).

Protocols differ between sources (data/README.md): each record has a `protocol` key and the predictors fit
an overhead per protocol and a scale per chip, never pooling raw numbers across sources. Rows that do not
measure one Neural Engine inference (end-to-end pipelines, GPU rows, W8A8 rows, a low-power state, video
steps whose memory modules are not rebuilt) keep a protocol that says so (`gpu:...`, `end-to-end:...`,
`excluded:...`) and stay out of every fit (`Measurement.in_fit`).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import math
import re
from pathlib import Path

from search_space import SpecError
from search_space.outputs import atomic_write

from .devices import ALIASES, KNOWN_CHIPS, available_chips

DATA_DIR = Path(__file__).parent / "data"
CALIBRATION_CSV = DATA_DIR / "calibration.csv"
LARGE_MODELS_CSV = DATA_DIR / "large_models.csv"
NOT_FITTED_PREFIXES = ("gpu:", "end-to-end:", "excluded:")

CALIBRATION_COLUMNS = ("model", "variant_note", "source_arch", "input_hw", "batch", "device", "chip", "runtime",
                       "latency_ms", "source_url", "source_table")
MEASUREMENT_COLUMNS = ("model", "arch", "input_shape", "device", "chip", "os", "compute_units", "precision",
                       "latency_ms", "source")
MEASUREMENT_OPTIONAL = ("p10_ms", "p90_ms", "load_ms", "runs", "weight_bits", "protocol", "tool_versions",
                        "notes")

# ml-stable-diffusion's SD 2.1-base rows: 6-bit palettized weights (README "6-bit palettized"), a CFG batch
# of 2 at a 64x64 latent with 77 text tokens of width 1024 (the SD 2.x OpenCLIP-H text encoder).
SD21_WEIGHT_BITS = 6
SD21_BATCH, SD21_LATENT, SD21_TOKENS, SD21_TEXT_DIM = 2, 64, 77, 1024

# Architecture families for leave-one-family-out validation: first pattern that matches the arch wins.
FAMILIES = (
    ("sd-unet", r"sd21|sd14|sd15|sd2-base|small-sd|unet|snapgen|fig3|preset:|spec:"),
    ("segment-anything", r"sam2|edgetam"),
    ("depth-anything", r"depth-anything"),
    ("distilbert", r"distilbert"),
    ("detr", r"detr"),
    ("conv-microbench", r"microbench:"),
    ("mobilevit", r"mobilevit"),
    ("fastvit", r"fastvit"),
    ("mobileone", r"mobileone"),
    ("mobilenet", r"mobilenet"),
    ("densenet", r"densenet"),
    ("vgg", r"vgg"),
    ("resnet", r"resnet"),
)

# Chip names as the sources write them -> profile names (profiles.py lists the phones of each chip).
_CHIP_NAMES = {"a13 bionic": "a13", "a14 bionic": "a14", "a15 bionic": "a15", "a16 bionic": "a16",
               "a17 pro": "a17pro", "a18 pro": "a18pro", "a18": "a18", "m1": "m1", "m2": "m2", "m3": "m3",
               "m4": "m4"}


def chip_key(chip: str) -> str:
    """"A17 Pro" -> "a17pro", "M1 Max (8P CPU / ...)" -> "m1max"; an unknown chip keeps a lower-case, space-free
    name (which `check_chip` then refuses, listing the known ones)."""
    c = re.sub(r"\(.*\)", "", chip).strip().lower()
    key = _CHIP_NAMES.get(c, re.sub(r"[^a-z0-9]+", "", c.replace(" bionic", "")))
    return ALIASES.get(key, key)  # a phone ("iPhone 15 Pro") names its chip


@functools.cache
def known_chips() -> tuple[str, ...]:
    """The chips a measurement row may name: the workbench's (devices.KNOWN_CHIPS), every profile's, and every
    chip of the published rows (read raw here, so that checking them needs no other check)."""
    published = set()
    for path in (CALIBRATION_CSV, LARGE_MODELS_CSV):
        with path.open(newline="") as f:
            published |= {chip_key(row["chip"]) for row in csv.DictReader(f)}
    return tuple(sorted(set(KNOWN_CHIPS) | set(available_chips()) | set(_CHIP_NAMES.values()) | published))


def check_chip(text: str) -> str:
    """The profile name of a row's chip cell; an empty or unknown chip raises ValueError listing the known ones."""
    chip = chip_key(text or "")
    if not chip:
        raise ValueError("chip is empty; write the chip as the source names it, e.g. A17 Pro")
    if chip not in known_chips():
        raise ValueError(f"unknown chip {text.strip()!r}; known chips: {', '.join(known_chips())} (phones such as "
                         f"iPhone 15 Pro name their chip; a new chip is added to KNOWN_CHIPS in "
                         f"latency_models/devices.py)")
    return chip


@dataclasses.dataclass(frozen=True)
class Measurement:
    model: str
    arch: str
    input_shape: tuple[int, ...]  # the primary input, batch first
    chip: str  # profile name, e.g. "a14"
    device: str
    latency_ms: float
    protocol: str
    source: str
    weight_bits: int = 16

    @property
    def family(self) -> str:
        return family_of(self.arch)

    @property
    def in_fit(self) -> bool:
        """One Neural Engine inference, as the predictors model it (not GPU, end-to-end or excluded)."""
        return not self.protocol.startswith(NOT_FITTED_PREFIXES)

    @property
    def model_key(self) -> str:
        """The architecture (without input size): leave-one-model-out holds out every row of it."""
        return self.arch

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_shape"] = "x".join(str(s) for s in self.input_shape)
        return d


def family_of(arch: str) -> str:
    for name, pattern in FAMILIES:
        if re.search(pattern, arch):
            return name
    return arch.split(":")[-1].rstrip("0123456789_")


class MeasurementError(SpecError):
    """A measurement file that cannot be used; the message names the columns or the file lines."""


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"measurement file {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


MAX_LATENCY_MS = 3_600_000.0  # [choose] an hour: no single Core ML prediction this predictor models takes longer
FORMULA_START = ("=", "+", "-", "@")  # a spreadsheet runs a cell that starts so as a formula
MAX_LISTED = 8  # bad rows named in one error line
MAX_WEIGHT_BITS = 32


class CellError(ValueError):
    """One bad cell of a measurement row: the column and what is wrong with its text."""

    def __init__(self, column: str, message: str):
        super().__init__(f"column {column}: {message}")


def _cell(row: dict, column: str, parse, default=None):
    """`parse` applied to a row's stripped cell (an empty optional cell gives `default`); any ValueError or
    SpecError becomes a CellError naming the column."""
    text = (row.get(column) or "").strip()
    if not text and default is not None:
        return default
    try:
        return parse(text)
    except (ValueError, SpecError) as e:
        raise CellError(column, str(e) or f"{text[:40]!r} is not valid") from None


def _positive(text: str, high: float = math.inf, whole: bool = False) -> float:
    """A finite number above 0 (and at most `high`); `whole`: a whole number."""
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a {'whole ' if whole else ''}number") from None
    if not (math.isfinite(value) and 0 < value <= high):
        raise ValueError(f"{text[:40]!r} must be a positive, finite number up to {high:g}")
    return value


def _latency(text: str) -> float:
    return _positive(text, MAX_LATENCY_MS)


def check_formula_cells(path: Path, line: int, row: dict, skip=()) -> None:
    """Refuse a cell a spreadsheet would run as a formula (a leading =, +, - or @ that is not a number)."""
    for column, cell in row.items():
        text = str(cell or "").lstrip()
        if column and column not in skip and text.startswith(FORMULA_START) and not _number(text):
            raise MeasurementError(f"{path}: line {line}, column {column}: {text[:40]!r} starts like a "
                                   f"spreadsheet formula; remove the leading {text[0]!r}")


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def detect_schema(columns: list[str]) -> str:
    return "calibration" if "source_arch" in columns else "measurement"


def read_measurements(path: str | Path) -> list[Measurement]:
    """Read and validate a calibration- or measurement-schema CSV; raises MeasurementError naming the lines."""
    path = Path(path)
    columns, rows = _read_rows(path)
    schema = detect_schema(columns)
    required = CALIBRATION_COLUMNS if schema == "calibration" else MEASUREMENT_COLUMNS
    missing = [c for c in required if c not in columns]
    if missing:
        raise MeasurementError(f"{path}: missing column(s) {', '.join(missing)} for the {schema} schema "
                               f"(needs {', '.join(required)})")
    out, bad = [], []
    large = path.name == LARGE_MODELS_CSV.name  # the large-model schema: descriptive source_arch, protocols
    for i, row in enumerate(rows):
        check_formula_cells(path, i + 2, row, skip=("latency_ms",))
        try:
            out.append(_from_calibration(row, large) if schema == "calibration" else _from_measurement(row))
        except (ValueError, SpecError) as e:
            bad.append(f"line {i + 2}, {e}" if isinstance(e, CellError) else f"line {i + 2}: {e}")
    if bad:  # every bad row is named, so that one round of fixes is enough; nothing is read from the file
        more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise MeasurementError(f"{path}: {len(bad)} bad row(s), none used: {'; '.join(bad[:MAX_LISTED])}{more}")
    return out


def _from_calibration(row: dict, large: bool = False) -> Measurement:
    if large:
        return _from_large(row)
    arch_text = row["source_arch"].strip()
    latency, chip = _cell(row, "latency_ms", _latency), _cell(row, "chip", check_chip)
    if not arch_text:
        if "SD 2.1" not in row["model"]:
            raise CellError("source_arch", f"empty: the row for {row['model']!r} names no architecture to rebuild")
        arch, shape, bits = "diffusers:sd21-unet", (SD21_BATCH, 4, SD21_LATENT, SD21_LATENT), SD21_WEIGHT_BITS
    else:
        batch = _cell(row, "batch", lambda t: int(_positive(t, whole=True)), default=1)
        hw = _cell(row, "input_hw", _leading_size)
        shape, bits = (batch, 3, hw, hw), 16
        arch = _cell(row, "source_arch", lambda t: _checked_arch(_library_arch(t), shape))
    return Measurement(row["model"], arch, shape, chip, row["device"], latency, _protocol(row),
                       f"{row['source_url']} | {row['source_table']}", bits)


def _leading_size(text: str) -> int:
    """"224" or "224x224 (center crop)" -> 224."""
    m = re.match(r"(\d+)", text)
    if not m:
        raise ValueError(f"{text[:40]!r} does not start with the input size in pixels, e.g. 224")
    return int(_positive(m.group(1), whole=True))


def _checked_arch(arch: str, shape: tuple[int, ...]) -> str:
    from .archs import check_arch

    check_arch(arch, shape)
    return arch


# Large-model rows (data/large_models.csv): model text -> (arch, input shape, weight bits); first match wins.
_LARGE_ARCHS = (
    (r"^SD 2\.1-base UNet", "diffusers:sd21-unet", (SD21_BATCH, 4, SD21_LATENT, SD21_LATENT), SD21_WEIGHT_BITS),
    (r"^SDXL-base", "preset:sdxl-unet", (2, 4, 128, 128), 16),
    (r"^SD v1\.4", "pipeline:sd14", (2, 4, 64, 64), 16),
    (r"^Stable Diffusion 1\.5", "pipeline:sd15", (2, 4, 64, 64), 16),
    (r"^(SD 2-base|Stable Diffusion 2 Base)", "pipeline:sd2-base", (2, 4, 64, 64), 16),
    (r"^Stable Diffusion 2\.1 Base", "pipeline:sd21-base", (2, 4, 64, 64), 16),
    (r"small-stable-diffusion", "pipeline:small-sd-v0", (2, 4, 64, 64), 16),
    (r"^Depth Anything", "transformers:depth-anything-small", (1, 3, 392, 518), 16),
    (r"^DETR", "transformers:detr-r50-panoptic", (1, 3, 448, 448), 16),
    (r"^SAM 2", "transformers:sam2-hiera-b+", (1, 3, 1024, 1024), 16),
    (r"^EdgeTAM", "transformers:edgetam", (1, 3, 1024, 1024), 16),
    (r"^DistilBERT", "transformers:distilbert", (1, 128), 16),
    (r"20x dense 3x3 conv", "microbench:conv3x3-c128-l20", (1, 128, 256, 256), 16),
    (r"64x pointwise 1x1", "microbench:conv1x1-c512-l64", (1, 512, 64, 64), 16),
    (r"128x pointwise 1x1", "microbench:conv1x1-c512-l128", (1, 512, 64, 64), 16),
)


def _large_protocol(row: dict) -> str:
    """Protocol of a large-model row; rows the predictors do not model get a not-fitted prefix and the why."""
    note, runtime, model, url = row["variant_note"], row["runtime"], row["model"], row["source_url"]
    if "APPLE GPU ROW" in note or "CPU_AND_GPU" in runtime or "Metal GPU" in runtime:
        return "gpu:" + _slug(url)
    if "END-TO-END" in note:
        return "end-to-end:" + _slug(url)
    if "INT8" in model:
        return "excluded:int8-w8a8"  # the features are fp16; W8A8 compute is another regime
    if "0.072 W" in note:
        return "excluded:low-power-state"  # the article's second operating point of the same model
    if "video object segmentation" in model:
        return "excluded:video-step"  # memory attention / encoder of the video step are not rebuilt
    if model.startswith("DETR"):
        return "excluded:not-rebuildable"  # transformers' DETR calls .item() in forward: no meta walk
    if "ml-stable-diffusion/blob/7f9c58a" in url:
        return "ml-stable-diffusion-per-step-2023-06"
    if "huggingface.co/apple" in url:
        return "hf-model-card-macos"
    if "EdgeTAM" in url:
        return "edgetam-readme"
    if "machinelearning.apple.com" in url:
        return "apple-ane-transformers-article"
    if "MPSGraph" in runtime:
        return "mpsgraph-ane"
    if "_ANEClient" in runtime:
        return "private-ane-client"
    return _slug(url)


def _slug(url: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", url.lower().replace("https://", ""))[:48].strip("-")


def _from_large(row: dict) -> Measurement:
    for pattern, arch, shape, bits in _LARGE_ARCHS:
        if re.search(pattern, row["model"]):
            break
    else:
        raise ValueError(f"no architecture known for large-model row {row['model']!r}")
    return Measurement(row["model"], arch, shape, _cell(row, "chip", check_chip), row["device"],
                       _cell(row, "latency_ms", _latency), _large_protocol(row),
                       f"{row['source_url']} | {row['source_table']}", bits)


def _library_arch(text: str) -> str:
    """Calibration source_arch -> "torchvision:..." or "timm:..." (torchvision first: the zoo's PyTorch rows
    are torchvision models; FastViT, MobileOne and MobileViTv2 exist only in timm)."""
    import torchvision

    from .export import parse_arch

    name, _ = parse_arch(text)
    clean = re.sub(r"\s*\((?![^)]*=).*\)\s*$", "", text).strip()  # drop "(reparameterized)"-style notes
    return f"torchvision:{clean}" if name in torchvision.models.list_models() else f"timm:{clean}"


def _protocol(row: dict) -> str:
    """One key per measuring protocol (data/README.md): overheads are fitted per protocol."""
    url, runtime = row["source_url"], row["runtime"]
    if "opt-resnet" in url or "iOS 18 seed" in runtime:
        return "coremltools-docs-ios18-seed"
    if "coremltools" in url:
        return "coremltools-docs-xcode"
    if "coreml-model-zoo" in url:
        return "coreml-model-zoo-2020"
    if "huggingface.co" in url:
        return "hf-model-card"
    if "ModelBench" in runtime:
        return "modelbench"
    if "ml-stable-diffusion" in url:
        return "ml-stable-diffusion-per-step"
    return re.sub(r"[^a-z0-9]+", "-", url.lower())[-40:]


def parse_shape(text: str) -> tuple[int, ...]:
    """"1x3x224x224" -> (1, 3, 224, 224). Torch-free (unlike export.py), so that reading `--input` for a
    cached prediction loads no torch."""
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise SpecError(f"input shape {text!r} is not like 1x3x224x224") from None
    if not shape or any(s <= 0 for s in shape):
        raise SpecError(f"input shape {text!r} needs positive sizes, like 1x3x224x224")
    return shape


def _from_measurement(row: dict) -> Measurement:
    latency, chip = _cell(row, "latency_ms", _latency), _cell(row, "chip", check_chip)
    shape = _cell(row, "input_shape", parse_shape)  # for specs: the latents' shape, e.g. 1x16x128x128
    if not row["arch"].strip():
        raise CellError("arch", "empty; write e.g. timm:fastvit_t8 or preset:snapgen-unet")
    arch = _cell(row, "arch", lambda t: _checked_arch(t, shape))
    bits = _cell(row, "weight_bits", lambda t: int(_positive(t, MAX_WEIGHT_BITS, whole=True)), default=16)
    for column in ("p10_ms", "p90_ms", "load_ms"):
        _cell(row, column, _latency, default=1.0)
    _cell(row, "runs", lambda t: _positive(t, whole=True), default=1)
    protocol = (row.get("protocol") or "").strip() or f"measure-{row['compute_units'].strip().lower()}"
    return Measurement(row["model"], arch, shape, chip, row["device"], latency, protocol, row["source"], bits)


def load_calibration() -> list[Measurement]:
    """The 51 published rows of small models and the SD 2.1-base UNet (data/calibration.csv)."""
    return read_measurements(CALIBRATION_CSV)


def load_large_models(fitted_only: bool = False) -> list[Measurement]:
    """The 74 published rows of large models (data/large_models.csv); `fitted_only` keeps the rows that
    measure one Neural Engine inference (`Measurement.in_fit`)."""
    rows = read_measurements(LARGE_MODELS_CSV)
    return [m for m in rows if m.in_fit] if fitted_only else rows


def load_published() -> list[Measurement]:
    """Every published row the predictors are fitted on: calibration plus the in-fit large-model rows."""
    return load_calibration() + load_large_models(fitted_only=True)


def import_measurements(path: str | Path, into: str | Path) -> tuple[int, Path]:
    """Validate `path` and append its rows to the measurement store `into` (measurement schema).
    Returns (rows added, store path)."""
    records = read_measurements(path)
    into = Path(into)
    into.parent.mkdir(parents=True, exist_ok=True)
    new = not into.exists()
    columns = MEASUREMENT_COLUMNS + MEASUREMENT_OPTIONAL
    # appended to a copy that replaces the store: a full disk never leaves half a row in it
    with atomic_write(into, append=True) as tmp, tmp.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        if new:
            w.writeheader()
        for m in records:
            w.writerow({"model": m.model, "arch": m.arch, "input_shape": "x".join(map(str, m.input_shape)),
                        "device": m.device, "chip": m.chip, "os": "", "compute_units": "",
                        "precision": "fp16", "latency_ms": m.latency_ms, "source": m.source,
                        "weight_bits": m.weight_bits, "protocol": m.protocol})
    return len(records), into
