"""Ratio rows: published "latency(after) / latency(before) = r" for one design change on one chip.

A paper that reports design steps as relative changes (SnapGen's Figure 3 chain: "-24% latency") gives no
milliseconds, but it is the only kind of measurement that separates, on one chip and one protocol, what two
mechanisms cost (dense convs vs high-resolution attention). The fitter (roofline.fit_roofline) uses each row
as a log-space constraint with a stated uncertainty, sigma_log, not as one more latency row.

The CSV schema (RATIO_COLUMNS; data/design_chain.csv holds the published rows) keeps the columns in which such
rows are published plus the attention form the model was exported with:
- `model_before`, `model_after`: presets (`fig3-a`, or `preset:fig3-a`) or spec JSON paths (`spec:PATH`).
- `input`: "128x128 latent, one UNet forward pass" (batch 1) or a latents shape such as 2x16x64x64.
- `latency_ratio_after_over_before`: r, a positive number; `sigma_log` (optional): the uncertainty of log r.
- `attention`: math or split_einsum (export.py's forms), the form the measured models ran in.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import re
from pathlib import Path

from search_space.outputs import atomic_write

from .measurements import DATA_DIR, MeasurementError, check_chip, check_formula_cells

DESIGN_CHAIN_CSV = DATA_DIR / "design_chain.csv"
RATIO_COLUMNS = ("device", "chip", "runtime", "input", "model_before", "model_after",
                 "latency_ratio_after_over_before", "published_as", "source", "source_location", "attention")
RATIO_OPTIONAL = ("sigma_log",)
ATTENTION_FORMS = ("math", "split_einsum")
# [choose] sigma of log r: the paper rounds to whole percents (0.5 points is 0.007 in log r at r = 0.76) and
# the project rebuilds steps whose exact widths are not published (docs/paper.md); 0.05 (5% in r) covers both.
DEFAULT_SIGMA_LOG = 0.05
# A single design change that makes a model over 100x faster or slower is a typo (a percent written as a ratio).
RATIO_RANGE = (0.01, 100.0)
SIGMA_RANGE = (0.001, 2.0)


@dataclasses.dataclass(frozen=True)
class RatioMeasurement:
    model_before: str  # a prediction target: preset name or spec JSON path
    model_after: str
    latent: int
    batch: int
    chip: str
    device: str
    ratio: float  # latency(after) / latency(before)
    sigma_log: float
    attention: str
    protocol: str
    source: str
    published_as: str = ""

    # A ratio row is its own group in held-out validation: its models are workbench designs that no latency row
    # measures, so leave-one-model-out and leave-one-family-out keep every ratio row in the fit, and ratio rows
    # are validated one at a time (leave-one-ratio-out, roofline.held_out_ratios).
    @property
    def family(self) -> str:
        return "ratio:" + self.label

    @property
    def model_key(self) -> str:
        return "ratio:" + self.label

    @property
    def label(self) -> str:
        return f"{self.model_before} -> {self.model_after}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _target(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("model_before / model_after is empty; write a preset (fig3-a) or spec:PATH.json")
    if text.startswith("preset:"):
        return text.split(":", 1)[1]
    if text.startswith("spec:"):
        return text.split(":", 1)[1]
    return text


def _shape(text: str) -> tuple[int, int]:
    """(batch, latent) from "128x128 latent, one UNet forward pass" or a latents shape "BxCxHxW"."""
    m = re.fullmatch(r"\s*(\d+)x(\d+)x(\d+)x(\d+)\s*", text)
    if m:
        b, _, h, w = (int(g) for g in m.groups())
        if h != w:
            raise ValueError(f"input {text!r}: the workbench's latents are square; write BxCxNxN")
        return b, h
    m = re.match(r"\s*(\d+)x(\d+) latent", text)
    if not m or m.group(1) != m.group(2):
        raise ValueError(f"input {text!r}: write '128x128 latent, one UNet forward pass' or a latents shape "
                         f"such as 1x16x128x128")
    return 1, int(m.group(1))


def _protocol(row: dict) -> str:
    return "ratio:" + re.sub(r"[^a-z0-9]+", "-", (row["source"] + " " + row["device"]).lower()).strip("-")[:48]


def detect(columns: list[str]) -> bool:
    return "latency_ratio_after_over_before" in columns


def read_ratios(path: str | Path) -> list[RatioMeasurement]:
    """Read and validate a ratio CSV; raises MeasurementError naming the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ratio file {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = list(reader.fieldnames or []), list(reader)
    missing = [c for c in RATIO_COLUMNS if c not in columns]
    if missing:
        raise MeasurementError(f"{path}: missing column(s) {', '.join(missing)} for the ratio schema "
                               f"(needs {', '.join(RATIO_COLUMNS)}; optional {', '.join(RATIO_OPTIONAL)})")
    out = []
    for i, row in enumerate(rows):
        line = i + 2  # line 1 is the header
        check_formula_cells(path, line, row)
        try:
            out.append(_from_row(row))
        except ValueError as e:
            raise MeasurementError(f"{path}: line {line}: {e}") from None
    return out


def _bounded(row: dict, column: str, default: float | None, low: float, high: float, what: str) -> float:
    text = (row.get(column) or "").strip()
    if not text and default is not None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a number; write {what}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{column} {text!r} must be a finite number from {low:g} to {high:g} ({what})")
    return value


def _from_row(row: dict) -> RatioMeasurement:
    ratio = _bounded(row, "latency_ratio_after_over_before", None, *RATIO_RANGE,
                     "latency(after) / latency(before), e.g. 0.76 for -24%")
    sigma = _bounded(row, "sigma_log", DEFAULT_SIGMA_LOG, *SIGMA_RANGE, "the uncertainty of log r, e.g. 0.05")
    attention = (row.get("attention") or "").strip()
    if attention not in ATTENTION_FORMS:
        raise ValueError(f"attention {attention!r} is not one of {', '.join(ATTENTION_FORMS)} (the form the "
                         f"models were exported with: `pocketdiff export coreml --attention`)")
    chip = check_chip(row["chip"] or "")
    before, after = _target(row["model_before"]), _target(row["model_after"])
    if before == after:
        raise ValueError(f"model_before and model_after are both {before!r}; a ratio row compares two models")
    batch, latent = _shape(row["input"])
    return RatioMeasurement(before, after, latent, batch, chip, row["device"].strip(), ratio, sigma, attention,
                            _protocol(row), f"{row['source']} | {row['source_location']}",
                            row.get("published_as", "").strip())


def load_design_chain() -> list[RatioMeasurement]:
    """The published ratios of the SnapGen design chain (data/design_chain.csv)."""
    return read_ratios(DESIGN_CHAIN_CSV)


def import_ratios(path: str | Path, into: str | Path) -> tuple[int, Path]:
    """Validate `path` (ratio schema) and append its rows, as written, to the ratio store `into`."""
    read_ratios(path)  # validates every row first: nothing is appended from a file with a bad row
    into = Path(into)
    into.parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    new = not into.exists()
    with atomic_write(into, append=True) as tmp, tmp.open("a", newline="") as f:  # never half a row in the store
        w = csv.DictWriter(f, fieldnames=RATIO_COLUMNS + RATIO_OPTIONAL, extrasaction="ignore")
        if new:
            w.writeheader()
        for row in rows:
            w.writerow(row)
    return len(rows), into
