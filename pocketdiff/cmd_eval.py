"""`pocketdiff eval quality` and `pocketdiff eval compare`: the quality evaluator from the command line
(docs/paper.md section 1 protocol; seeds and paired comparisons as docs/quality.md describes them).

Parses, calls `evaluators.quality`, prints a one-screen summary (or the record with --json) and writes
samples + record.json + checkpoints/ (the one checkpoint format) under --out.
"""
from __future__ import annotations

import argparse
import json
import sys

from pocketdiff.cli import UsageError
from search_space.errors import seed_arg
from search_space.outputs import check_output_dir
from training.budget import QUALITY_RUN_BUDGET

SUMMARY_KEYS = ("status", "steps", "train_images_per_s", "val_loss", "learned_fraction", "val_loss_constant",
                "val_loss_class_mean", "val_loss_linear", "fd_domain", "fd_domain_floor", "kid_domain",
                "precision_domain", "recall_domain", "fid", "kid", "precision", "recall", "fid_note",
                "metrics_invalid", "budget_note", "seconds_train", "seconds_sample", "seconds_total", "train_share")


def _common(p: argparse.ArgumentParser, default_budget: str, default_seeds: int) -> None:
    from training.config import LoopConfig

    p.add_argument("--data", default="mnist5k", help="mnist5k | imagenet:PATH | folder:PATH | latents:PATH")
    p.add_argument("--budget", default=default_budget,
                   help="training budget: 2000steps, 3epochs, 5e12flops (reproducible) or 60s / 2m (wall clock); "
                        "0steps = untrained")
    p.add_argument("--seed", type=seed_arg, default=0, help="first seed (0 to 2**32 - 1)")
    p.add_argument("--seeds", type=int, default=default_seeds,
                   help=f"seeds seed..seed+N-1: mean and 95%% interval per metric (default {default_seeds})")
    p.add_argument("--samples", type=int, default=None, help="generated images to score (default 192, at most "
                                                              "the reference set; 0: validation loss only)")
    p.add_argument("--sample-steps", type=int, default=None, help="Euler steps (default 8)")
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (default 2)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"training batch size (default {LoopConfig.batch_size})")
    p.add_argument("--width-mult", type=float, default=None,
                   help="proxy width multiplier (default: 128 / the widest stage)")
    p.add_argument("--fid", choices=("auto", "on", "off"), default="auto",
                   help="Inception FID: auto = only if the weights are on disk; on = download if needed")
    p.add_argument("--fid-weights", default=None, metavar="PATH",
                   help="torch-fidelity Inception weights (weights-inception-2015-12-05-6726825d.pth)")
    p.add_argument("--vae", default=None, metavar="PATH", help="VAE folder to decode latents (default: manifest's)")
    p.add_argument("--encoder", default="minilm", help="text encoder: minilm or a local CLIP/T5 folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("eval", help="score specs: quality (short flow-matching run + FID), compare")
    sub = group.add_subparsers(dest="command", metavar="<command>")
    p = sub.add_parser("quality", help="train a spec's proxy for a budget, sample, score (FD / FID)")
    p.add_argument("spec", help="preset name or spec JSON file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set stages.1.channels=96 (repeatable)")
    _common(p, str(QUALITY_RUN_BUDGET), 1)
    p.add_argument("--out", default=None, help="folder for samples.png, record.json and checkpoints/")
    p.set_defaults(func=cmd_quality)
    c = sub.add_parser("compare", help="paired comparison of two specs over seeds: difference per metric with "
                                       "its 95%% interval")
    c.add_argument("a", help="preset name or spec JSON file")
    c.add_argument("b", help="preset name or spec JSON file")
    c.add_argument("--set-a", dest="overrides_a", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of A (repeatable)")
    c.add_argument("--set-b", dest="overrides_b", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of B, e.g. compare X X --set-b ffn_ratio=3 (repeatable)")
    _common(c, "96steps", 3)
    c.add_argument("--margin", dest="margins", action="append", default=[], metavar="METRIC=VALUE",
                   help="equivalence margin in the metric's units: 'comparable' only when TOST puts |A - B| "
                        "below it (defaults: evaluators/quality.py COMPARE_MARGINS, printed with the verdicts; "
                        "a metric without a margin is never 'comparable') (repeatable)")
    c.set_defaults(func=cmd_compare)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])


def _options(args: argparse.Namespace) -> dict:
    """Validated evaluator keyword arguments shared by both commands (bad values: UsageError, one line)."""
    from search_space.limits import check_number
    from training.budget import WALL_CLOCK_NOTICE, Budget
    from training.config import MAX_BATCH, MAX_CFG_SCALE, MAX_SAMPLE_STEPS, MAX_SAMPLES, MAX_SEEDS, LoopConfig
    from training.proxy import ProxyConfig

    Budget.parse(args.budget)
    for name in ("samples", "sample_steps", "batch_size", "seeds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name, high in (("samples", MAX_SAMPLES), ("sample_steps", MAX_SAMPLE_STEPS), ("batch_size", MAX_BATCH),
                       ("seeds", MAX_SEEDS), ("cfg_scale", MAX_CFG_SCALE)):  # the study file's ranges
        if getattr(args, name) is not None:
            check_number(getattr(args, name), f"--{name.replace('_', '-')}", 0 if name == "cfg_scale" else 1, high,
                         whole=name != "cfg_scale", error=UsageError)
    proxy = ProxyConfig(width_mult=args.width_mult)
    config = (LoopConfig.quality_preset() if args.batch_size is None
              else LoopConfig.quality_preset(batch_size=args.batch_size))
    if Budget.parse(args.budget).wall_clock and not (args.json or args.quiet):
        print(WALL_CLOCK_NOTICE, file=sys.stderr)
    return dict(num_samples=args.samples, sample_steps=args.sample_steps or LoopConfig.sample_steps,
                cfg_scale=LoopConfig.cfg_scale if args.cfg_scale is None else args.cfg_scale, fid=args.fid,
                fid_weights=args.fid_weights, vae=args.vae, encoder=args.encoder, train_config=config,
                proxy_config=proxy, device=args.device, progress=not args.quiet)


def _margins(items: list[str]) -> dict[str, float]:
    """--margin val_loss=0.01 (repeatable) -> {"val_loss": 0.01}; the library checks the names and signs."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UsageError(f"--margin {item!r}: expected METRIC=VALUE, e.g. --margin val_loss=0.02")
    return out


def _fmt(record: dict, key: str) -> str:
    value = record[key]
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if f"{key}_ci_low" in record:
        text += f"  [{record[f'{key}_ci_low']:.4g}, {record[f'{key}_ci_high']:.4g}] 95%"
    return text


def cmd_quality(args: argparse.Namespace) -> int:
    from search_space import load_spec
    from evaluators.quality import evaluate_quality_seeds

    spec = load_spec(args.spec, args.overrides)
    options = _options(args)
    if args.out is not None:
        check_output_dir(args.out, "--out")
    if not (args.json or args.quiet):
        print(f"spec {spec.spec_id} ({args.spec})  data {args.data}  budget {args.budget}  seeds "
              f"{args.seed}..{args.seed + args.seeds - 1}", file=sys.stderr)
    record = evaluate_quality_seeds(spec, args.data, args.budget, args.seed, args.seeds, out_dir=args.out, **options)
    if args.json:
        print(json.dumps(record, indent=1))
        return 0 if record["status"] == "ok" else 1
    print(f"spec {record['spec_id']} -> proxy {record['proxy_spec_id']} (channels {record['proxy']['channels'][1]}, "
          f"{record['params_proxy'] / 1e6:.2f}M params)  data {record['data']}  seeds {record['seeds']}")
    for key in SUMMARY_KEYS:
        if key in record and record[key] is not None:
            print(f"  {key:20s} {_fmt(record, key)}")
    if "out_dir" in record:
        print(f"  wrote {record['out_dir']}/record.json, samples.png, checkpoints/ (use as --init, --teacher, sample, export --checkpoint)")
    return 0 if record["status"] == "ok" else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from search_space import load_spec
    from evaluators.quality import compare_quality, compare_verdict

    a, b = load_spec(args.a, args.overrides_a), load_spec(args.b, args.overrides_b)
    options = _options(args)
    if not (args.json or args.quiet):
        print(f"A {a.spec_id} ({args.a})  B {b.spec_id} ({args.b})  data {args.data}  budget {args.budget}  "
              f"seeds {args.seed}..{args.seed + args.seeds - 1}", file=sys.stderr)
    result = compare_quality(a, b, args.data, args.budget, args.seed, args.seeds, margins=_margins(args.margins),
                             **options)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"A {args.a} (proxy {result['proxy_a']}) vs B {args.b} (proxy {result['proxy_b']}), width "
          f"x{result['width_mult']:.4g}, {result['budget']}, seeds {result['seeds']} (paired: same batches, noise "
          f"and timesteps per seed), 95% t-intervals")
    margins = ", ".join(f"{k} +-{v:g}" for k, v in result["margins"].items())
    tests = result["tests"]
    print(f"  verdicts at alpha {result['alpha']:.2g}, Holm-corrected over the {tests} test{'s' * (tests != 1)} of "
          f"this table; 'comparable' = TOST within the margin set in advance ({margins}; --margin METRIC=VALUE)")
    for name, m in result["metrics"].items():
        print(f"  A {m['a']:.4g}  B {m['b']:.4g}   " + compare_verdict(name, m, len(result["seeds"])))
    if result.get("baselines"):
        b = result["baselines"]
        print(f"  baselines of {result['data']}: constant {b['val_loss_constant']:.4g}, class mean "
              f"{b['val_loss_class_mean']:.4g}, linear-Gaussian {b['val_loss_linear']:.4g} (learned_fraction: 0 at "
              f"the constant, 1 at the linear-Gaussian)")
    for reason in result["invalid"]:
        print(f"  no FD/KID: {reason}")
    return 0
