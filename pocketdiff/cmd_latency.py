"""`pocketdiff latency ...`: on-device latency prediction, measurement, import, calibration and validation.

predict  NAME|spec.json|--torchvision NAME|--timm NAME --device DEVICE   predicted ms with a band
measure  model.mlpackage --compute-units cpu_and_ne --runs 100 --out m.csv   Core ML timing (macOS only)
plan     --device DEVICE [-n N] [--include NAME ...] [-o plan.csv]   measurements that best pin the model
import   m.csv [--into STORE]          validate a measurement CSV and add it to the measurement store
fit      [--measurements CSV ...] [--device DEVICE]   refit the device profiles (or only one) and write the reports
report   --device DEVICE               the profile's validation against FLOPs-only / params-only baselines
devices                                chips with a profile, their aliases and data
features NAME ... [--source torch|coreml]   per-op-class feature table
host     NAME ... --device cpu|cuda    torch latency on this machine (a separate, measured objective)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketdiff.cmd_export import add_model_arguments, check_size_flags, model_target
from search_space.outputs import check_output_dir, check_output_file


def register(sub: argparse._SubParsersAction) -> None:
    lat = sub.add_parser("latency", help="on-device latency: predict, measure, import, fit, report")
    lsub = lat.add_subparsers(dest="command", metavar="<command>")

    p = lsub.add_parser("predict", help="predicted Neural Engine latency with an uncertainty band")
    add_model_arguments(p)
    p.add_argument("--device", required=True, help="chip (a14, a17pro, m2, ...) or phone (iphone15pro)")
    p.add_argument("--weight-bits", type=int, default=16, help="stored weight precision (6 = palettized)")
    p.add_argument("--attention", choices=("math", "split_einsum"),
                   help="price the model exported in this attention form (default: the form the profile was "
                        "fitted on)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)

    e = lsub.add_parser("explain", help="predicted ms per stage, op kind and block; --compare: where a change "
                                        "comes from")
    add_model_arguments(e)
    e.add_argument("--device", required=True, help="chip (a14, a17pro, m2, ...) or phone (iphone15pro)")
    e.add_argument("--compare", metavar="B", help="a second preset or spec JSON (same latent and batch): "
                                                  "explain B minus the first model")
    e.add_argument("--weight-bits", type=int, default=16, help="stored weight precision (6 = palettized)")
    e.add_argument("--top", type=int, default=8, help="largest (stage, block, op kind) changes to list")
    e.add_argument("--profiles", help="profile folder (default: the package's profiles/; `latency fit --profiles` "
                                      "writes others)")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=cmd_explain)

    m = lsub.add_parser("measure", help="time a .mlpackage with Core ML (needs macOS)")
    m.add_argument("package", help="the .mlpackage to time")
    m.add_argument("--compute-units", default="cpu_and_ne", help="all, cpu_and_ne, cpu_and_gpu or cpu_only")
    m.add_argument("--runs", type=int, default=100, help="timed predictions (default 100)")
    m.add_argument("--warmup", type=int, default=10, help="untimed predictions first (default 10)")
    m.add_argument("--out", default="measurements.csv", help="CSV to append the row to")
    m.add_argument("--json", action="store_true", help="print the row as JSON")
    m.set_defaults(func=cmd_measure)

    pl = lsub.add_parser("plan", help="choose the measurements that best tell the cost model's hypotheses apart")
    pl.add_argument("--device", required=True, help="chip or phone whose profile to plan for")
    pl.add_argument("-n", type=int, default=8, help="measurements to choose (default 8)")
    pl.add_argument("--include", nargs="*", default=[], metavar="NAME",
                    help="more candidates: presets, spec JSON files or ARCH@SHAPE (e.g. a study's candidates)")
    pl.add_argument("--latent", type=int, default=128, help="latent size of included presets / specs")
    pl.add_argument("--batch", type=int, default=1, help="batch of included presets / specs")
    pl.add_argument("--profiles", help="profile folder (default: the package's profiles/)")
    pl.add_argument("-o", "--out", default="plan.csv", help="plan CSV to write (default plan.csv)")
    pl.add_argument("--json", action="store_true", help="print the plan rows as JSON")
    pl.set_defaults(func=cmd_plan)

    i = lsub.add_parser("import", help="validate measurement CSVs and add them to the measurement store")
    i.add_argument("csv", nargs="+", help="CSV files (measurement, calibration or ratio schema)")
    i.add_argument("--into", help="the store (default $POCKETDIFF_CACHE/measurements.csv; ratio rows go to "
                                  "ratios.csv beside it)")
    i.set_defaults(func=cmd_import)

    f = lsub.add_parser("fit", help="refit all device profiles from the calibration data and imported rows")
    f.add_argument("--measurements", nargs="*", default=[],
                   help="extra measurement or ratio CSVs (e.g. the store and its ratios.csv)")
    f.add_argument("--fit-ratios", action="store_true",
                   help="fit the roofline on the ratio rows too (default: only check it against them); "
                        "latency_models/reports/ratios.md says what that costs on held-out rows")
    f.add_argument("--profiles", help="where to write profiles (default: the package's profiles/)")
    f.add_argument("--reports", help="where to write reports (default: latency_models/reports/)")
    f.add_argument("--device", help="replace only this chip's profile (the fit still pools every chip's rows); "
                                    "the other profiles and the reports are left as they are")
    f.set_defaults(func=cmd_fit)

    r = lsub.add_parser("report", help="validation of a device profile against FLOPs / params baselines")
    r.add_argument("--device", required=True, help="chip or phone")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=cmd_report)

    d = lsub.add_parser("devices", help="chips with a profile, aliases and measurement counts")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(func=cmd_devices)

    ft = lsub.add_parser("features", help="per-op-class features from the torch graph or the Core ML program")
    add_model_arguments(ft)
    ft.add_argument("--source", choices=("torch", "coreml"), default="torch",
                    help="torch: meta-device walk (fast); coreml: ops of the converted program (converts)")
    ft.add_argument("--ops", action="store_true", help="print every op, not only the per-class summary")
    ft.add_argument("--json", action="store_true", help="print JSON")
    ft.set_defaults(func=cmd_features)

    h = lsub.add_parser("host", help="measured torch latency on this machine's CPU or CUDA device")
    add_model_arguments(h)
    h.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    h.add_argument("--runs", type=int, default=10, help="timed forwards (default 10)")
    h.add_argument("--warmup", type=int, default=2, help="untimed forwards first (default 2)")
    h.add_argument("--half", action="store_true", help="fp16 weights and inputs")
    h.add_argument("--json", action="store_true", help="print JSON")
    h.set_defaults(func=cmd_host)


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def cmd_predict(args) -> int:
    from latency_models.api import predict

    target, shape = model_target(args)
    p = predict(target, shape, args.device, latent=args.latent, batch=args.batch, weight_bits=args.weight_bits,
                attention=args.attention)
    if args.json:
        print(json.dumps(p.to_dict(), indent=2))
        return 0
    ident = p.model if p.model == p.model_id else f"{p.model} ({p.model_id})"
    print(f"{ident} input {p.input_shape} on {p.chip}: {_fmt_ms(p.ms)} "
          f"[{_fmt_ms(p.low_ms)} .. {_fmt_ms(p.high_ms)}]")
    print(f"  band: {p.band_note}")
    print(f"  features: {p.feature_source} - {p.feature_note}" + (" (cached)" if p.cached_features else ""))
    print(f"  cost model: {p.cost_model}; protocol: {p.protocol}; attention form: {p.attention}; profile fit "
          f"{p.profile_fit_id}; {p.seconds:.2f} s")
    for w in p.warnings:
        print(f"  warning: {w}")
    return 0


def _split(d: dict, total: float) -> str:
    items = sorted(((k, v) for k, v in d.items() if abs(v) >= 0.005), key=lambda kv: -abs(kv[1]))
    return ", ".join(f"{k} {v:+.1f}" if total is None else f"{k} {v:.1f} ({100 * v / total:.0f}%)"
                     for k, v in items)


def cmd_explain(args) -> int:
    from latency_models.explain import breakdown, compare, ratio_evidence

    target, shape = model_target(args)
    if args.top < 1:
        from pocketdiff.cli import UsageError
        raise UsageError("--top must be at least 1")
    a = breakdown(target, args.device, latent=args.latent, batch=args.batch, input_shape=shape,
                  weight_bits=args.weight_bits, profile_dir=args.profiles)
    b = None if args.compare is None else breakdown(args.compare, args.device, latent=args.latent,
                                                    batch=args.batch, weight_bits=args.weight_bits,
                                                    profile_dir=args.profiles)
    evidence = None if b is None else ratio_evidence(a, b, args.profiles)
    if args.json:
        print(json.dumps({"a": a, "b": b, "compare": None if b is None else compare(a, b, args.top),
                          "ratio": evidence}, indent=2))
        return 0
    for x in (a, b) if b else (a,):
        body = x["total_ms"] - x["overhead_ms"]
        print(f"{x['model']} ({x['model_id']}) input {x['input_shape']} on {x['chip']}: {_fmt_ms(x['total_ms'])} "
              f"[{x['cost_model']} model; protocol {x['protocol']} overhead {x['overhead_ms']:.2f} ms; "
              f"{x['ops']} ops]")
        print(f"  per stage:   {_split(x['per_stage_ms'], body)}")
        print(f"  per op kind: {_split(x['per_kind_ms'], body)}")
        print(f"  per block:   {_split(x['per_block_ms'], body)}")
        if x["per_term_ms"]:
            print(f"  per term:    {_split(x['per_term_ms'], body)}"
                  + (f"; ops spilling on-chip memory: {100 * x['spill_share']:.0f}% of the time"
                     if x["spill_share"] is not None else ""))
        if x.get("evidence"):
            _print_evidence(x["evidence"])
    if b is None:
        return 0
    c = compare(a, b, args.top)
    print(f"{c['b']} vs {c['a']} on {c['chip']}: {c['delta_ms']:+.1f} ms ({c['delta_pct']:+.1f}%)")
    e = evidence
    band = ("no band: the profile has no ratio rows" if e["low"] is None else
            f"80% band {_chg(e['low'])} .. {_chg(e['high'])} ({e['band_from']})")
    print(f"  without overhead: {_chg(e['ratio'])}, {band}")
    if e["published"]:
        p = e["published"]
        fit = ("fitted on it; refitted without it: " + _chg(p["held_out"]) if e["in_fit"]
               else "not fitted on it (`latency fit --fit-ratios` does)")
        print(f"  published: {_chg(p['published'])} on {p['device']} ({p['source']}); this profile was {fit}; "
              f"FLOPs-only {_chg(p['flops_only'])}, params-only {_chg(p['params_only'])}")
    print(f"  per stage:   {_split(c['per_stage_ms'], None)}")
    print(f"  per op kind: {_split(c['per_kind_ms'], None)}")
    print(f"  per block:   {_split(c['per_block_ms'], None)}")
    if c["per_term_ms"]:
        print(f"  per term:    {_split(c['per_term_ms'], None)}")
    print("  largest changes (stage / block / op kind: A ms -> B ms):")
    for r in c["largest_changes"]:
        print(f"    {r['stage']:<7} {r['block']:<15} {r['kind']:<12} {r['a_ms']:8.2f} -> {r['b_ms']:8.2f}  "
              f"({r['delta_ms']:+.2f})")
    return 0


_BEYOND = {"weight_bytes": ("weights", lambda v: f"{v / 1e6:.1f} MB"), "k": ("reduction", lambda v: f"{v:,.0f}"),
           "rows_per_slice": ("output rows per slice", lambda v: f"{v:,.0f}")}


def _print_evidence(evidence: dict) -> None:
    """Per MAC op kind: implied TFLOP/s, fitted efficiency, the rows that pinned it, ops beyond calibration."""
    peak = next(iter(evidence.values()))["peak_tflops"]
    print(f"  evidence per op kind (the chip's fitted fp16 peak {peak:.1f} TFLOP/s):")
    for kind, e in sorted(evidence.items(), key=lambda kv: -kv[1]["ms"]):
        rate = "n/a" if e["tflops"] is None else f"{e['tflops']:.2f} TFLOP/s ({100 * e['tflops'] / peak:.0f}% of peak)"
        pins = ", ".join(f"{p['model']} on {p['chip']} ({100 * p['share']:.0f}% of its time)"
                         for p in e.get("pinned_by", []))
        print(f"    {kind:<7} {e['ms']:.1f} ms, {e['gflops']:.0f} GFLOP: {rate}; fitted efficiency "
              f"{e['efficiency']:.3f}" + (f"; pinned by {pins}" if pins else ""))
        if e.get("outside_ops"):
            why = "; ".join(f"{name} up to {fmt(v['largest'])} > {fmt(v['calibrated_max'])} ({v['ops']} ops)"
                            for k, v in e["outside_by"].items() if v["ops"] for name, fmt in [_BEYOND[k]])
            print(f"            outside the calibrated range: {e['outside_ops']} ops, "
                  f"{100 * e['outside_share']:.0f}% of its time: {why}")


def cmd_measure(args) -> int:
    from latency_models.measure import MeasureUnavailable, append_row, measure_coreml
    from pocketdiff.cli import UsageError

    if not Path(args.package).exists():
        raise UsageError(f"{args.package} does not exist; make one with `pocketdiff export coreml ... -o`")
    check_output_file(args.out, "--out")
    try:
        row = measure_coreml(args.package, args.compute_units, args.runs, args.warmup)
    except MeasureUnavailable as e:
        print(f"pocketdiff: {e}")
        return 1
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = append_row(row, args.out)
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(f"{row['model']} on {row['chip']} ({row['compute_units']}): median {row['latency_ms']:.3f} ms, "
              f"p10 {row['p10_ms']:.3f}, p90 {row['p90_ms']:.3f}, load {row['load_ms']:.0f} ms -> {out}")
    return 0


def cmd_plan(args) -> int:
    from latency_models.plan import MEASUREMENT_SIGMA, plan_for_device, write_plan
    from latency_models.profiles import resolve_device
    from pocketdiff.cli import UsageError

    if args.n < 1:
        raise UsageError("-n must be at least 1")
    check_size_flags(args)
    check_output_file(args.out, "-o")
    chip = resolve_device(args.device, args.profiles)
    rows, summary = plan_for_device(chip, args.n, tuple(args.include), args.latent, args.batch, args.profiles,
                                    progress=lambda m: print(f"  {m}", flush=True) if not args.json else None)
    path = write_plan(rows, args.out)
    if args.json:
        print(json.dumps({**summary, "path": str(path), "rows": rows}, indent=2))
        return 0
    print(f"{len(rows)} of {summary['candidates']} candidates for {chip} (profile fit {summary['fit_id']}; "
          f"starting from the priors and its {summary['base_rows']} fitted rows; each row counted as a log-latency "
          f"observation with sigma {MEASUREMENT_SIGMA}), in order of choice:")
    for r in rows:
        print(f"  {r['arch']:<34} {r['input_shape']:<16} predicted {r['predicted_ms']:>8} ms, "
              f"uncertain by {r['uncertainty_log']} log  -> pins {r['informs'] or 'little (already known)'}")
    print(f"wrote {path}: for each row run its export_command, then its measure_command on a Mac (or enter an "
          f"iPhone's Xcode Performance median in latency_ms), then `pocketdiff latency import measured.csv` and "
          f"`pocketdiff latency fit --measurements STORE`")
    return 0


def _store(path: str | None) -> Path:
    from latency_models.export import cache_root
    return Path(path) if path else cache_root() / "measurements.csv"


def _is_ratio_csv(path: str) -> bool:
    import csv

    from latency_models.ratios import detect

    p = Path(path)
    if not p.is_file():
        return False  # the reader says the file is missing
    with p.open(newline="") as f:
        return detect(next(csv.reader(f), []))


def cmd_import(args) -> int:
    from latency_models.measurements import import_measurements
    from latency_models.ratios import import_ratios

    store = check_output_file(_store(args.into), "--into")
    ratio_store = store.with_name("ratios.csv")
    stores = []
    for path in args.csv:
        if _is_ratio_csv(path):
            n, where = import_ratios(path, ratio_store)
            print(f"{path}: {n} ratio rows valid, added to {where}")
        else:
            n, where = import_measurements(path, store)
            print(f"{path}: {n} rows valid, added to {where}")
        stores.append(str(where))
    print(f"next: `pocketdiff latency fit --measurements {' '.join(sorted(set(stores)))}` refits the device profiles")
    return 0


REPORT_DIR = Path(__file__).resolve().parent.parent / "latency_models" / "reports"


def cmd_fit(args) -> int:
    from latency_models.measurements import load_large_models, load_published, read_measurements
    from latency_models.profiles import build_profiles
    from latency_models.ratios import load_design_chain, read_ratios
    from latency_models.profiles import PROFILE_DIR
    from latency_models.report import write_reports

    check_output_dir(args.profiles or PROFILE_DIR, "--profiles")
    if not args.device:  # --device leaves the reports as they are
        check_output_dir(args.reports or REPORT_DIR, "--reports")
    ms, rs = load_published(), load_design_chain()
    for path in args.measurements:
        if _is_ratio_csv(path):
            rs += read_ratios(path)
        else:
            ms += read_measurements(path)
    used = [m for m in ms if m.in_fit]
    # The published large-model rows that time something else (GPU, whole pipelines, W8A8...) never enter a fit.
    kept_out = len(ms) - len(used) + sum(not m.in_fit for m in load_large_models())
    print(f"fitting on {len(used)} measurements ({len({m.chip for m in used})} chips; {kept_out} published or "
          f"imported rows kept out of fits under their own protocols, see latency_models/data/README.md) and "
          f"{len(rs)} ratio rows "
          f"({'fitted' if args.fit_ratios else 'checked, not fitted'}); features are cached after the first run",
          flush=True)

    from latency_models.api import ratio_features

    walks = []
    for r in rs:
        walks.append(ratio_features(r))
        print(f"  features: {r.label} ({r.latent}x{r.latent} latent, batch {r.batch})", flush=True)
    if args.device:
        return _fit_one_device(args, ms, rs, walks)
    result = build_profiles(ms, out_dir=args.profiles, ratios=rs, ratio_features=walks, fit_ratios=args.fit_ratios,
                            progress=lambda m: print(f"  features: {m.model} ({m.arch})", flush=True))
    report = result.pop("_report")
    paths = write_reports(result, report, Path(args.reports) if args.reports else REPORT_DIR)
    for chip, prof in result.items():
        lofo = prof["validation"]["leave_one_family_out"]
        print(f"  {chip:<7} rows {prof['validation']['rows']:>2}  LOFO Spearman roofline "
              f"{_num(lofo['roofline']['spearman'])} today {_num(lofo['predictor']['spearman'])} FLOPs "
              f"{_num(lofo['flops_linear']['spearman'])}  MAPE {_pct(lofo['roofline']['mape'])} / "
              f"{_pct(lofo['predictor']['mape'])} / {_pct(lofo['flops_linear']['mape'])}  -> "
              f"small: {prof['model']['adopted']['small']}, large: {prof['model']['adopted']['large']}"
              + _coverage_text(prof["band"].get("leave_one_family_out_coverage")))
    ratios = report["ratios"]
    if ratios["rows"]:
        print("ratio rows (latency after / before): published, " + (
            "fitted, held out (leave-one-ratio-out)" if ratios["in_fit"] else "predicted, predicted (not in the fit)")
            + ", FLOPs-only, params-only")
        for x in ratios["rows"]:
            print(f"  {x['before']} -> {x['after']} on {x['chip']}: {_chg(x['published'])}, {_chg(x['fitted'])}, "
                  f"{_chg(x['held_out'])}, {_chg(x['flops_only'])}, {_chg(x['params_only'])}")
        acc = ratios["decision_accuracy"]
        print(f"  right sign and within {ratios['decision_points']:g} points: " + ", ".join(
            f"{k.replace('_', '-')} {a['right']}/{a['n']}" for k, a in acc.items()))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _fit_one_device(args, ms, rs, walks) -> int:
    """Fit as usual into a scratch folder, then replace only the chip's profile, recording the fit it replaces."""
    import tempfile

    from latency_models.profiles import PROFILE_DIR, build_profiles, load_profile, resolve_device
    from pocketdiff.cli import UsageError

    chip = resolve_device(args.device, args.profiles)
    if not any(m.chip == chip and m.in_fit for m in ms):
        raise UsageError(f"no in-fit measurement of {chip}: measure it (`pocketdiff latency plan --device "
                         f"{args.device}`) and pass the rows with --measurements")
    out_dir = Path(args.profiles or PROFILE_DIR)
    old = load_profile(chip, out_dir) if (out_dir / f"{chip}.json").is_file() else None
    with tempfile.TemporaryDirectory() as scratch:
        result = build_profiles(ms, out_dir=scratch, ratios=rs, ratio_features=walks, fit_ratios=args.fit_ratios,
                                progress=lambda m: print(f"  features: {m.model} ({m.arch})", flush=True))
    prof = result[chip] | {"previous_fit_id": old["fit_id"] if old else None}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{chip}.json").write_text(json.dumps(prof, indent=1, sort_keys=False) + "\n")
    print(f"wrote {out_dir / f'{chip}.json'}: fit {prof['fit_id']} (was {prof['previous_fit_id'] or 'none'}), "
          f"{len(prof['measurements'])} rows of {chip}; other profiles and the reports were not rewritten "
          f"(`pocketdiff latency fit` without --device refits them all)")
    return 0


def _chg(r) -> str:
    from latency_models.report import change_text
    return change_text(r, 0)


def _coverage_text(c) -> str:
    if not c or not c["rows"]:
        return ""
    plain = c.get("without_protocol_rule")
    return (f"; band catches {c['covered']}/{c['rows']} held-out families' rows"
            + ("" if plain is None else f" ({plain} without the unfitted-protocol widening)"))


def _num(x) -> str:
    return "  n/a" if x is None else f"{x:5.3f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def cmd_report(args) -> int:
    from latency_models.profiles import load_profile, resolve_device
    from latency_models.report import format_report

    chip = resolve_device(args.device)
    profile = load_profile(chip)
    if args.json:
        print(json.dumps({"chip": chip, "fit_id": profile["fit_id"], "validation": profile["validation"],
                          "band": profile["band"]}, indent=2))
    else:
        print(format_report(profile))
    return 0


def cmd_devices(args) -> int:
    from latency_models.profiles import KNOWN_CHIPS, available_chips, load_profile

    rows = []
    for chip in sorted(set(KNOWN_CHIPS) | set(available_chips())):
        if chip in available_chips():
            p = load_profile(chip)
            rows.append({"chip": chip, "profile": True, "rows": len(p["measurements"]), "aliases": p["aliases"],
                         "devices": p["devices"], "fit_id": p["fit_id"]})
        else:
            rows.append({"chip": chip, "profile": False, "rows": 0, "aliases": [], "devices": [], "fit_id": None})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        status = f"{r['rows']:>2} rows, fit {r['fit_id']}" if r["profile"] else "no profile (no measurements)"
        print(f"{r['chip']:<7} {status:<24} {', '.join(r['aliases'])}")
    return 0


def cmd_features(args) -> int:
    from latency_models.export import ExportError, convert, model_for
    from latency_models.features import features_from_mil
    from latency_models.predictor import source_features

    target, shape = model_target(args)
    kind, _, name = str(target).partition(":")
    device = "meta" if args.source == "torch" else None
    if shape is None:
        src = model_for(target, latent=args.latent, batch=args.batch, device=device)
    else:
        src = model_for(**{kind: name}, input_shape=shape, device=device)
    if args.source == "coreml":
        try:
            table = features_from_mil(convert(src)._mil_program)
        except ExportError as e:
            note = f"Core ML conversion failed, fell back to the torch graph: {e}"
            print(f"note: {note}")
            meta = model_for(target, latent=args.latent, batch=args.batch, device="meta") if shape is None \
                else model_for(**{kind: name}, input_shape=shape, device="meta")
            table = source_features(meta)
            table.note = note
    else:
        table = source_features(src)
    if args.json:
        print(json.dumps({"source": table.source, "note": table.note, "by_class": table.by_class(),
                          "ops": table.to_rows() if args.ops else None}, indent=2))
        return 0
    print(f"{src.label} ({src.model_id}): {len(table.ops)} ops, features from {table.source}"
          + (f" ({table.note})" if table.note else ""))
    print(f"  {'class':<12} {'ops':>5} {'GFLOPs':>10} {'act MB':>10} {'weight MB':>10}")
    for r in table.by_class():
        print(f"  {r['op_class']:<12} {r['ops']:>5} {r['gflops']:>10.3f} {r['act_mb']:>10.1f} {r['weight_mb']:>10.1f}")
    if args.ops:
        for f in table.ops:
            print(f"  {f.op:<28} {f.op_class:<12} {f.flops / 1e6:>10.2f} MFLOP  out {f.out_shape}")
    return 0


def cmd_host(args) -> int:
    from latency_models.export import model_for
    from latency_models.measure import measure_host

    target, shape = model_target(args)
    kind, _, name = str(target).partition(":")
    src = model_for(target, latent=args.latent, batch=args.batch) if shape is None \
        else model_for(**{kind: name}, input_shape=shape)
    r = measure_host(src, args.device, args.runs, args.warmup, args.half)
    if args.json:
        print(json.dumps({"model": src.label, "model_id": src.model_id, **r}, indent=2))
    else:
        print(f"{src.label} on {r['device']} ({r['dtype']}, {r['threads']} threads): median "
              f"{_fmt_ms(r['median_ms'])}, p10 {_fmt_ms(r['p10_ms'])}, p90 {_fmt_ms(r['p90_ms'])} "
              f"over {r['runs']} runs")
    return 0
