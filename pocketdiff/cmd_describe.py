"""`pocketdiff presets list` and `pocketdiff describe NAME|spec.json [--compare A B]`: what a design costs."""
from __future__ import annotations

import argparse
import json

from search_space import PRESETS
from search_space.compact import encode
from search_space.presets import preset_summary

DEFAULT_LATENT = 128  # evaluators.cost.DEFAULT_LATENT (imported lazily: it loads torch); a test keeps them equal


def register(sub: argparse._SubParsersAction) -> None:
    presets = sub.add_parser("presets", help="list the registered presets")
    psub = presets.add_subparsers(dest="command", metavar="<command>")
    plist = psub.add_parser("list", help="name, kind, spec_id and summary of every preset")
    plist.add_argument("--json", action="store_true", help="print JSON")
    plist.set_defaults(func=cmd_presets_list)

    d = sub.add_parser("describe", help="spec_id, compact string and per-stage cost table of a spec")
    d.add_argument("spec", nargs="?", help="preset name or spec JSON file")
    d.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two specs side by side")
    d.add_argument("--latent", type=int, default=DEFAULT_LATENT, help="latent size (default 128 = 1024 px)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set stages.1.channels=512 (repeatable)")
    d.add_argument("--no-memory", action="store_true", help="skip the peak-activation pass")
    d.add_argument("--json", action="store_true", help="print JSON (spec, counts, per-stage rows)")
    d.add_argument("--proxy", action="store_true",
                   help="also show the CPU proxy the quality evaluator trains, and the knobs it does not represent")
    d.add_argument("--width-mult", type=float, default=None,
                   help="with --proxy: the study's width multiplier (default: 128 / this spec's widest stage)")
    d.add_argument("--data", default="mnist5k",
                   help="with --proxy: the data the proxy denoises (its channels and size; default mnist5k)")
    d.set_defaults(func=cmd_describe)


def cmd_presets_list(args) -> int:
    rows = [{"name": n, "kind": s.kind, "spec_id": s.spec_id, "summary": preset_summary(n)} for n, s in PRESETS.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<20} {r['kind']:<8} {r['spec_id']}  {r['summary']}")
    return 0


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _describe_one(name: str, args) -> dict:
    from evaluators.cost import describe_cost
    from pocketdiff.cli import UsageError
    from search_space import load_spec
    from search_space.limits import check_latent

    check_latent(args.latent, "--latent", UsageError)
    spec = load_spec(name, args.overrides)
    cost = describe_cost(spec, args.latent, memory=not args.no_memory)
    return {"name": name, "spec": spec, "spec_id": spec.spec_id, "compact": encode(spec), **cost}


def _print_one(d: dict) -> None:
    print(f"{d['name']}  spec_id {d['spec_id']}")
    print(f"  {d['compact']}")
    print(f"  params {_fmt_int(d['params'])} ({d['params'] / 1e6:.2f}M)   "
          f"GMACs at {d['latent']}x{d['latent']} latent: {d['gmacs']:.2f} "
          f"(without attention products {d['gmacs_no_attention']:.2f})")
    if "peak_activation_bytes" in d:
        print(f"  peak activation memory of one forward (batch 1, fp32): {d['peak_activation_bytes'] / 2 ** 20:,.1f} MiB")
    header = f"  {'stage':<7}{'ch':>6}{'layers':>8}{'trf':>7}{'attn':>7}{'res':>6}{'tokens':>8}{'params (M)':>12}{'GMACs':>10}"
    print(header)
    for r in d["stages"]:
        ch = "" if r["channels"] is None else r["channels"]
        print(f"  {r['stage']:<7}{ch!s:>6}{r['layers']:>8}{r['transformer']:>7}{r['attention']:>7}"
              f"{r['resolution']:>6}{r['tokens'] or '':>8}{r['params'] / 1e6:>12.2f}{r['macs'] / 1e9:>10.2f}")


def _jsonable(d: dict) -> dict:
    out = dict(d)
    out["spec"] = json.loads(d["spec"].to_json())
    return out


def cmd_describe(args) -> int:
    from pocketdiff.cli import UsageError

    if args.compare:
        if args.spec:
            raise UsageError("give either a spec or --compare A B, not both")
        a, b = (_describe_one(n, args) for n in args.compare)
        if args.json:
            print(json.dumps({"a": _jsonable(a), "b": _jsonable(b)}, indent=2))
            return 0
        _print_compare(a, b)
        return 0
    if not args.spec:
        raise UsageError("describe needs a preset name or spec JSON file (see `pocketdiff presets list`)")
    d = _describe_one(args.spec, args)
    mapping = _proxy_mapping(d["spec"], args) if args.proxy else None
    if args.json:
        print(json.dumps({**_jsonable(d), **({"proxy": mapping} if mapping else {})}, indent=2))
    else:
        _print_one(d)
        if mapping:
            from training.proxy import describe_mapping
            print("\n".join(describe_mapping(mapping)))
    return 0


def _proxy_mapping(spec, args) -> dict:
    from pocketdiff.cli import UsageError
    from search_space import UNetSpec
    from training.data import model_space
    from training.proxy import DEFAULT_TEXT_DIM, ProxyConfig, proxy_spec

    if not isinstance(spec, UNetSpec):
        raise UsageError(f"--proxy applies to UNet specs; {spec.kind} spec {spec.spec_id} is not one")
    channels, size = model_space(args.data)
    return proxy_spec(spec, channels, DEFAULT_TEXT_DIM, 0, ProxyConfig(width_mult=args.width_mult), size=size)[1]


def _delta(a: float, b: float) -> str:
    return f"{(b / a - 1) * 100:+.1f}%" if a else "n/a"


def _print_compare(a: dict, b: dict) -> None:
    print(f"A {a['name']}  spec_id {a['spec_id']}\n  {a['compact']}")
    print(f"B {b['name']}  spec_id {b['spec_id']}\n  {b['compact']}")
    from search_space import paths
    diffs = [(k, "(absent)" if va is paths.MISSING else va, "(absent)" if vb is paths.MISSING else vb)
             for k, va, vb in paths.diff(a["spec"].to_dict(), b["spec"].to_dict())]
    print("changed fields: " + ("; ".join(f"{k}: {va} -> {vb}" for k, va, vb in diffs) if diffs else "none"))
    print(f"{'':<26}{'A':>14}{'B':>14}{'change':>10}")
    rows = [("params (M)", a["params"] / 1e6, b["params"] / 1e6),
            (f"GMACs @{a['latent']} latent", a["gmacs"], b["gmacs"]),
            ("GMACs w/o attention", a["gmacs_no_attention"], b["gmacs_no_attention"])]
    if "peak_activation_bytes" in a:
        rows.append(("peak activations (MiB)", a["peak_activation_bytes"] / 2 ** 20, b["peak_activation_bytes"] / 2 ** 20))
    for label, va, vb in rows:
        print(f"{label:<26}{va:>14.2f}{vb:>14.2f}{_delta(va, vb):>10}")
    by_stage_b = {r["stage"]: r for r in b["stages"]}
    print(f"{'per stage':<10}{'params A':>12}{'params B':>12}{'change':>10}{'GMACs A':>10}{'GMACs B':>10}{'change':>10}")
    for r in a["stages"]:
        rb = by_stage_b.get(r["stage"])
        if rb is None:
            continue
        print(f"{r['stage']:<10}{r['params'] / 1e6:>12.2f}{rb['params'] / 1e6:>12.2f}{_delta(r['params'], rb['params']):>10}"
              f"{r['macs'] / 1e9:>10.2f}{rb['macs'] / 1e9:>10.2f}{_delta(r['macs'], rb['macs']):>10}")
