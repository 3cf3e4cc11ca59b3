"""Optuna sampling: a search-space definition (from a study file) turns a trial into a spec.

A space is a base spec (a preset) plus knobs, each a dotted path into the spec's dict:
    attention = "mqa"                                   fixed value
    "stages.1.channels" = {choices = [384, 512]}        categorical
    ffn_ratio = {low = 2.0, high = 4.0, step = 0.5}     float range (int range when low/high/step are ints)
    "stages.*.self_attention" = {choices = [true, false]}   one knob per stage (stages.0..., stages.1...)
    kv_heads = {choices = [1, 2], when = {attention = "gqa"}}   conditional: only sampled when it applies
    conv_expansion = {choices = [1.0, 2.0], when = {conv = "separable"}, otherwise = 1.0}
    preset = {choices = ["fig3-a", "fig3-b"]}          pick the base spec itself (grid over presets)
The Optuna parameter name is the path, so trials show `stages.1.channels` etc.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .paths import get_path, set_path
from .presets import PRESETS
from .spec import FIELD_RANGES, RENAMED_FIELDS, Spec, check_field, renamed_field, spec_from_dict


@dataclass(frozen=True)
class Knob:
    path: str
    fixed: Any = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: tuple[tuple[str, Any], ...] = ()
    otherwise: Any = None  # value used when `when` does not hold (None: keep the base spec's value)

    @property
    def is_fixed(self) -> bool:
        return self.choices is None and self.low is None

    def applies(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) == v for k, v in self.when)

    def suggest(self, trial) -> Any:
        if self.is_fixed:
            return self.fixed
        if self.choices is not None:
            # Optuna's categorical choices must be None/bool/int/float/str: encode lists as their repr
            if any(isinstance(c, (list, tuple)) for c in self.choices):
                labels = [repr(list(c)) if isinstance(c, (list, tuple)) else repr(c) for c in self.choices]
                picked = trial.suggest_categorical(self.path, labels)
                return list(self.choices[labels.index(picked)])
            return trial.suggest_categorical(self.path, list(self.choices))
        if all(isinstance(x, int) and not isinstance(x, bool) for x in (self.low, self.high, self.step or 1)):
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.path, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    base: str
    knobs: tuple[Knob, ...] = field(default_factory=tuple)

    @property
    def preset_choices(self) -> tuple[str, ...] | None:
        for k in self.knobs:
            if k.path == "preset":
                return tuple(k.choices) if k.choices else (k.fixed,)
        return None

    def sample(self, trial) -> Spec:
        """Suggest every knob that applies and build the spec (raises SpecError for an invalid combination)."""
        base = self.base
        values: dict[str, Any] = {}
        for knob in self.knobs:
            if knob.path == "preset":
                base = knob.suggest(trial)
                values["preset"] = base
        d = copy.deepcopy(PRESETS[base].to_dict())
        d["kind"] = PRESETS[base].kind
        for knob in self.knobs:
            if knob.path == "preset":
                continue
            values.update({p: _get(d, p) for p, _ in knob.when if p not in values})
            if not knob.applies(values):
                if knob.otherwise is not None:
                    values[knob.path] = knob.otherwise
                    _set(d, knob.path, knob.otherwise)
                continue
            v = knob.suggest(trial)
            values[knob.path] = v
            _set(d, knob.path, v)
        return spec_from_dict(d)

    def grid(self) -> dict[str, list] | None:
        """The GridSampler search space when every non-fixed knob is categorical (e.g. a preset grid)."""
        grid = {}
        for k in self.knobs:
            if k.is_fixed:
                continue
            if k.choices is None or k.when:
                return None
            grid[k.path] = list(k.choices)
        return grid

    def to_jsonable(self) -> dict:
        """What identifies the space: stored on the study so a changed space under the same name is refused."""
        return {"base": self.base, "knobs": [
            {"path": k.path, "fixed": k.fixed, "choices": list(k.choices) if k.choices else None, "low": k.low,
             "high": k.high, "step": k.step, "log": k.log, "when": dict(k.when), "otherwise": k.otherwise} for k in self.knobs]}


def parse_space(table: dict[str, Any], where: str = "space") -> SearchSpace:
    """Validate a [space] table: every path must exist in the base spec, every value must fit its field."""
    table = dict(table)
    base = table.pop("base", None)
    if base is None:
        raise SpecError(f"[{where}] needs base = \"<preset>\" (the spec the knobs change)")
    if base not in PRESETS:
        raise SpecError(f"[{where}] base={base!r} is not a preset; known: {', '.join(sorted(PRESETS))}")
    base_dict = PRESETS[base].to_dict()
    knobs: list[Knob] = []
    for key, value in table.items():
        if key in RENAMED_FIELDS:  # a study file written for an older schema
            key = renamed_field(key, f"[{where}]")
        for path in _expand(key, base_dict, where):
            knobs.append(_knob(path, value, base_dict, where))
    paths = {k.path for k in knobs}
    for k in knobs:
        for dep, _ in k.when:
            if dep not in paths and _get(base_dict, dep, missing=KeyError) is KeyError:
                raise SpecError(f"[{where}] {k.path}: when-condition on unknown key {dep!r}")
    space = SearchSpace(base=base, knobs=tuple(knobs))
    _check_base_values(space, where)
    return space


def _knob(path: str, value: Any, base_dict: dict, where: str) -> Knob:
    if path == "preset":
        choices = value.get("choices") if isinstance(value, dict) else [value]
        bad = [c for c in choices if c not in PRESETS]
        if bad:
            raise SpecError(f"[{where}] preset: unknown preset(s) {', '.join(map(str, bad))}")
        return Knob(path, choices=tuple(choices)) if isinstance(value, dict) else Knob(path, fixed=value)
    try:
        current = get_path(base_dict, path)
    except SpecError as e:  # the reason in the words --set uses for the same mistake
        raise SpecError(f"[{where}] unknown knob {path!r}: {str(e).removeprefix(path + ': ')}") from None
    if not isinstance(value, dict):
        _check_type(path, value, current, where)
        _check_sign(path, value, current, where)
        _check_range(path, value, where)
        return Knob(path, fixed=value)
    unknown = set(value) - {"choices", "low", "high", "step", "log", "when", "otherwise"}
    if unknown:
        raise SpecError(f"[{where}] {path}: unknown option(s) {', '.join(sorted(unknown))}; "
                        f"use choices = [...] or low/high[/step/log], optionally when = {{...}} and otherwise = ...")
    when_table = value.get("when") or {}
    if not isinstance(when_table, dict):
        raise SpecError(f"[{where}] {path}: when = {when_table!r} must be a table, e.g. when = {{attention = \"gqa\"}}")
    when = tuple(sorted(when_table.items()))
    otherwise = value.get("otherwise")
    if otherwise is not None:
        if not when:
            raise SpecError(f"[{where}] {path}: otherwise = ... only goes with when = {{...}}")
        _check_type(path, otherwise, current, where)
        _check_sign(path, otherwise, current, where)
        _check_range(path, otherwise, where)
    if "choices" in value:
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"[{where}] {path}: choices must be a non-empty list")
        for c in choices:
            _check_type(path, c, current, where)
            _check_sign(path, c, current, where)
            _check_range(path, c, where)
        return Knob(path, choices=tuple(tuple(c) if isinstance(c, list) else c for c in choices), when=when,
                    otherwise=otherwise)
    if "low" in value and "high" in value:
        low, high = value["low"], value["high"]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)):
            raise SpecError(f"[{where}] {path}: low and high must be numbers")
        if low > high:
            raise SpecError(f"[{where}] {path}: low={low} is above high={high}")
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise SpecError(f"[{where}] {path}: a range needs a numeric field, this one is {type(current).__name__}")
        _check_sign(path, low, current, where)
        step, log = value.get("step"), value.get("log", False)
        if not isinstance(log, bool):
            raise SpecError(f"[{where}] {path}: log = {log!r} must be true or false")
        if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0):
            raise SpecError(f"[{where}] {path}: step = {step!r} must be a positive number (or leave it out)")
        if step is not None and step > high - low and high > low:
            raise SpecError(f"[{where}] {path}: step = {step} is larger than the range {low}..{high}")
        if log and low <= 0:
            raise SpecError(f"[{where}] {path}: log = true needs low > 0 (low = {low}); a log scale has no 0")
        if log and step is not None:
            raise SpecError(f"[{where}] {path}: give step or log = true, not both (Optuna samples one or the other)")
        _check_range(path, low, where)
        _check_range(path, high, where)
        return Knob(path, low=low, high=high, step=step, log=log, when=when, otherwise=otherwise)
    raise SpecError(f"[{where}] {path}: give a value, choices = [...], or low = / high =")


def _check_type(path: str, value: Any, current: Any, where: str) -> None:
    if current is None:  # optional field (kv_heads): any int or null
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    elif isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(current, list):
        ok = isinstance(value, list) and len(value) == len(current)
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise SpecError(f"[{where}] {path}: value {value!r} does not fit the field (base value {current!r})")


def _check_sign(path: str, value: Any, current: Any, where: str) -> None:
    """A negative value for a field whose base value is not negative (a size, a ratio, a count) is a mistake:
    refused here rather than built into a model that silently means something else."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric and isinstance(current, (int, float)) and not isinstance(current, bool) and current >= 0 > value:
        raise SpecError(f"[{where}] {path}: {value!r} is negative; this field is a size or count "
                        f"(base value {current!r})")
    if isinstance(value, list) and isinstance(current, list):
        for i, (v, c) in enumerate(zip(value, current)):
            _check_sign(f"{path}[{i}]", v, c, where)


def _check_range(path: str, value: Any, where: str) -> None:
    """Every value a knob can take within its field's stated range (spec.FIELD_RANGES): a study that would
    sample ffn_ratio = inf or 10**30 channels is refused at load, not trial by trial."""
    field = next((p for p in reversed(path.split(".")) if not p.isdigit()), path)
    if field in FIELD_RANGES and value is not None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            check_field(field, v, f"[{where}] {path}")


def _check_base_values(space: SearchSpace, where: str) -> None:
    """Fixed values must give a valid spec on their own; ranges are checked per trial."""
    d = copy.deepcopy(PRESETS[space.base].to_dict())
    d["kind"] = PRESETS[space.base].kind
    for k in space.knobs:
        if k.is_fixed and k.path != "preset" and not k.when:
            _set(d, k.path, k.fixed)
    try:
        spec_from_dict(d)
    except SpecError as e:
        raise SpecError(f"[{where}] the fixed values give an invalid spec: {e}") from None


def _expand(key: str, base_dict: dict, where: str) -> list[str]:
    if "*" not in key:
        return [key]
    head, _, tail = key.partition(".*")
    seq = _get(base_dict, head, missing=KeyError)
    if not isinstance(seq, list):
        raise SpecError(f"[{where}] {key}: '{head}' is not a per-stage list")
    return [f"{head}.{i}{tail}" for i in range(len(seq))]


def _get(d: Any, path: str, missing: Any = None) -> Any:
    return get_path(d, path, default=missing)


def _set(d: dict, path: str, value: Any) -> None:
    set_path(d, path, value, where="knob ")
