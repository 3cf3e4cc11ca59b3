"""Published physical figures of each Neural Engine: the priors of the roofline model (roofline.py).

Every number names its source (data/README.md has the long form; data/large_models.md the original notes).
- Peak: Apple's marketing TOPS per chip (hollance/neural-engine docs/supported-devices.md). Ratings up to
  A16 / M3 are fp16 (Apple's "Deploying Transformers on the ANE": the 2021 16-core ANE is "15.8 TFlops");
  A17 Pro / A18 / M4 ratings are int8, so their fp16 peak is half (measured fp16 conv throughput on M4-class
  ANEs is 18.4-18.6 TOPS: freedomtan/measure_ane_capacity, maderix/ANE). TOPS count 2 ops per MAC.
- DRAM bandwidth: Apple's published unified-memory bandwidth for Macs; for phones the LPDDR generation and
  the 64-bit bus of the A-series (LPDDR4X-4266: 34.1 GB/s; LPDDR5-6400: 51.2 GB/s; LPDDR5X-7500: 60 GB/s).
  The ANE reaches only part of it; the fitted bandwidth factor says how much.
- On-chip memory: about 2 MB of tile L2 on the M1-generation ANE (eiln/ane, from the Asahi Linux driver
  work; an older tinygrad note says 4 MB), about 32 MB on M4 (maderix, inferred from a throughput cliff
  between 24 and 96 MB working sets). A17 Pro gets the M4 figure because it is the same int8-capable
  generation (coremltools and ml-stable-diffusion: W8A8 runs faster only on A17 Pro / M4 and later); there is
  no published A17 Pro figure, so this is the assumption most worth a device check.
"""
from __future__ import annotations

import dataclasses

SRAM_M1_GENERATION_MB = 2.0  # eiln/ane docs/tinygrad-corrections.md
SRAM_M4_GENERATION_MB = 32.0  # maderix.substack.com "Inside the M4 Apple Neural Engine", part 2


@dataclasses.dataclass(frozen=True)
class ChipFacts:
    peak_tflops_fp16: float
    dram_gbps: float
    sram_mb: float
    note: str


CHIPS: dict[str, ChipFacts] = {
    "a13": ChipFacts(6.0, 34.1, SRAM_M1_GENERATION_MB,
                     "8-core ANE; Apple: 20% faster than A12's 5 TOPS (hollance list gives A12 only); LPDDR4X"),
    "a14": ChipFacts(11.0, 34.1, SRAM_M1_GENERATION_MB, "16-core ANE, 11 TOPS fp16 (same ANE as M1); LPDDR4X"),
    "a15": ChipFacts(15.8, 34.1, SRAM_M1_GENERATION_MB, "15.8 TOPS fp16; LPDDR4X"),
    "a16": ChipFacts(17.0, 51.2, SRAM_M1_GENERATION_MB, "17 TOPS fp16; LPDDR5"),
    "a17pro": ChipFacts(17.5, 51.2, SRAM_M4_GENERATION_MB, "35 TOPS int8-rated -> ~17.5 fp16; LPDDR5"),
    "a18pro": ChipFacts(17.5, 60.0, SRAM_M4_GENERATION_MB, "35 TOPS int8-rated -> ~17.5 fp16; LPDDR5X"),
    "m1": ChipFacts(11.0, 68.25, SRAM_M1_GENERATION_MB, "11 TOPS fp16; 68.25 GB/s"),
    "m1pro": ChipFacts(11.0, 200.0, SRAM_M1_GENERATION_MB, "same 16-core ANE as M1; 200 GB/s"),
    "m1max": ChipFacts(11.0, 400.0, SRAM_M1_GENERATION_MB, "same 16-core ANE as M1; 400 GB/s"),
    "m2": ChipFacts(15.8, 100.0, SRAM_M1_GENERATION_MB, "15.8 TOPS fp16; 100 GB/s"),
    "m2max": ChipFacts(15.8, 400.0, SRAM_M1_GENERATION_MB, "15.8 TOPS fp16; 400 GB/s"),
    "m3max": ChipFacts(15.8, 400.0, SRAM_M1_GENERATION_MB,
                       "hollance list groups M3 with 15.8 TOPS; not W8A8-capable per coremltools; 400 GB/s"),
    "m4": ChipFacts(19.0, 120.0, SRAM_M4_GENERATION_MB, "38 TOPS int8-rated, 18.4-18.6 TOPS fp16 measured"),
    "m4pro": ChipFacts(19.0, 273.0, SRAM_M4_GENERATION_MB, "same ANE as M4; 273 GB/s; 18.5 TOPS fp16 measured"),
}


def facts(chip: str) -> ChipFacts | None:
    return CHIPS.get(chip)
