"""`pocketdiff eval quality`: the quality evaluator from the command line (SNAPGEN.md section 1 protocol).

Parses, calls `evaluators.quality.evaluate_quality`, prints a one-screen summary (or the record with --json)
and writes samples + record.json + checkpoint.pt under --out.
"""
from __future__ import annotations

import argparse
import json
import sys

from pocketdiff.cli import UsageError

SUMMARY_KEYS = ("status", "steps", "train_images_per_s", "val_loss", "fd_domain", "kid_domain", "precision_domain",
                "recall_domain", "fid", "kid", "precision", "recall", "fid_note", "seconds_train", "seconds_sample",
                "seconds_total", "train_share")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("eval", help="score specs: quality (short flow-matching run + FID)")
    sub = group.add_subparsers(dest="command", metavar="<command>")
    p = sub.add_parser("quality", help="train a spec's proxy for a budget, sample, score (FD / FID)")
    p.add_argument("spec", help="preset name or spec JSON file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set stages.1.channels=96 (repeatable)")
    p.add_argument("--data", default="mnist5k", help="mnist5k | imagenet:PATH | folder:PATH | latents:PATH")
    p.add_argument("--budget", default="60s", help="training budget: 60s, 2m or 500steps (0steps = untrained)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for samples.png, record.json and checkpoint.pt")
    p.add_argument("--samples", type=int, default=None, help="generated images to score (default 500)")
    p.add_argument("--sample-steps", type=int, default=None, help="Euler steps (default 8)")
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (default 2)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default 64)")
    p.add_argument("--fid", choices=("auto", "on", "off"), default="auto",
                   help="Inception FID: auto = only if the weights are on disk; on = download if needed")
    p.add_argument("--fid-weights", default=None, metavar="PATH",
                   help="torch-fidelity Inception weights (weights-inception-2015-12-05-6726825d.pth)")
    p.add_argument("--vae", default=None, metavar="PATH", help="VAE folder to decode latents (default: manifest's)")
    p.add_argument("--encoder", default="minilm", help="text encoder: minilm or a local CLIP/T5 folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(func=cmd_quality)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])


def cmd_quality(args: argparse.Namespace) -> int:
    from search_space import load_spec
    from evaluators.quality import (CFG_SCALE, NUM_SAMPLES, SAMPLE_STEPS, SpecKindError, evaluate_quality)
    from training.data import DataError
    from training.fidelity import MetricError
    from training.trainer import Budget, BudgetError, TrainConfig

    spec = load_spec(args.spec, args.overrides)
    try:
        budget = Budget.parse(args.budget)
    except BudgetError as e:
        raise UsageError(str(e)) from None
    for name in ("samples", "sample_steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    quiet = args.json or args.quiet
    if not quiet:
        print(f"spec {spec.spec_id} ({args.spec})  data {args.data}  budget {budget}  seed {args.seed}",
              file=sys.stderr)
    config = TrainConfig() if args.batch_size is None else TrainConfig(batch_size=args.batch_size)
    try:
        record = evaluate_quality(
            spec, args.data, budget, args.seed, out_dir=args.out,
            num_samples=args.samples or NUM_SAMPLES, sample_steps=args.sample_steps or SAMPLE_STEPS,
            cfg_scale=CFG_SCALE if args.cfg_scale is None else args.cfg_scale, fid=args.fid,
            fid_weights=args.fid_weights, vae=args.vae, encoder=args.encoder, train_config=config,
            device=args.device, progress=not args.quiet)
    except (DataError, MetricError, SpecKindError) as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(record, indent=1))
        return 0 if record["status"] == "ok" else 1
    print(f"spec {record['spec_id']} -> proxy {record['proxy_spec_id']} (channels {record['proxy']['channels'][1]}, "
          f"{record['params_proxy'] / 1e6:.2f}M params)  data {record['data']}")
    for key in SUMMARY_KEYS:
        if key in record and record[key] is not None:
            value = record[key]
            print(f"  {key:20s} {value:.4g}" if isinstance(value, float) else f"  {key:20s} {value}")
    if "out_dir" in record:
        print(f"  wrote {record['out_dir']}/record.json, samples.png, checkpoint.pt")
    return 0 if record["status"] == "ok" else 1
