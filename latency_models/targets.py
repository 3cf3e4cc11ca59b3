"""Core ML deployment targets the exporter accepts (torch-free, so the CLI can list them without loading torch)."""
from __future__ import annotations

TARGETS = ("iOS17", "iOS18")
DEFAULT_TARGET = "iOS17"
