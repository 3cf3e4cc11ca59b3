"""`--set key=value` overrides of a spec: `apply_overrides(spec, ["stages.1.channels=512", "attention=mqa"])`.

The paths are the one dotted-path grammar of `paths.py` (the same as study-file knobs), so the same mistake gives
the same message in both; see docs/specs-and-presets.md.
"""
from __future__ import annotations

from . import paths
from .errors import SpecError
from .spec import RENAMED_FIELDS, Spec, renamed_field


def apply_overrides(spec: Spec, overrides: list[str] | tuple[str, ...]) -> Spec:
    """Apply `key=value` overrides (`stages.1.channels=512`, `attention=mqa`) and re-validate.

    Values are parsed as JSON where they parse (numbers, true/false, null, lists), else taken as strings. A
    schema-1 field name (`mqa_in_cross_attention`) is read under its new name with a notice.
    """
    d = spec.to_dict()
    for item in overrides:
        key, value = paths.parse_assignment(item)
        if key == "schema":
            raise SpecError(f"--set {item}: schema is the version of the spec format, not a design field; "
                                  f"a spec file of an older schema is read and upgraded as it is")
        if "." not in key and key in RENAMED_FIELDS and RENAMED_FIELDS[key] in d:
            key = renamed_field(key, f"--set {key}")
        paths.set_path(d, key, value, where="--set ")
    return type(spec).from_dict(d)
