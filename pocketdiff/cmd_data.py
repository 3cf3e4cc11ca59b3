"""`pocketdiff data`: one-time latent pre-encoding and dataset summaries (docs/paper.md section 1: SD3 latents).

`data encode SOURCE --vae PATH --out DIR` runs a diffusers AutoencoderKL encoder over an ImageFolder once and
writes sharded latents + a manifest (resumable); `data info SOURCE` prints what a source holds.
"""
from __future__ import annotations

import argparse
import json
import sys

from pocketdiff.cli import UsageError
from search_space.outputs import check_output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("data", help="datasets: encode latents, inspect sources")
    sub = group.add_subparsers(dest="command", metavar="<command>")
    p = sub.add_parser("encode", help="encode an ImageFolder into latent shards + manifest (resumable)")
    p.add_argument("source", help="imagenet:PATH or folder:PATH (an ImageFolder tree)")
    p.add_argument("--vae", required=True, metavar="PATH",
                   help="diffusers AutoencoderKL folder (e.g. the SD3 VAE saved with save_pretrained)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for shard-*.safetensors + manifest.json")
    p.add_argument("--resolution", type=int, default=256, help="image resolution before encoding (default 256)")
    p.add_argument("--shard-size", type=int, default=4096, help="latents per shard")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_encode)
    p = sub.add_parser("info", help="summarise a data source (mnist5k, imagenet:PATH, folder:PATH, latents:PATH)")
    p.add_argument("source")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])


def cmd_encode(args: argparse.Namespace) -> int:
    from training.data import encode_latents

    from search_space.limits import MAX_RESOLUTION, check_number
    from training.config import MAX_BATCH

    for name, high in (("resolution", MAX_RESOLUTION), ("shard_size", 1 << 20), ("batch_size", MAX_BATCH)):
        check_number(getattr(args, name), f"--{name.replace('_', '-')}", 1, high, whole=True, error=UsageError)
    check_output_dir(args.out, "--out")
    manifest = encode_latents(args.source, args.vae, args.out, args.resolution, args.shard_size,
                              args.batch_size, args.device, progress=not args.quiet)
    if args.json:
        print(json.dumps(manifest, indent=1))
        return 0
    print(f"{manifest['count']} latents ({manifest['latent_channels']} channels) in {len(manifest['shards'])} "
          f"shards at {args.out}; {manifest['skipped']} unreadable images skipped; VAE {manifest['vae']}; "
          f"checksum {manifest['checksum'][:12]}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from training.data import load_data

    data = load_data(args.source)
    info = {"name": data.name, "kind": data.kind, "classes": data.num_classes, "resolution": data.resolution,
            "model_space": [data.channels, data.size, data.size], "train": data.train_count,
            "held_out": len(data.val_y), **{k: v for k, v in data.info.items() if k not in ("train", "val")}}
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for key, value in info.items():
            print(f"{key:16s} {value}", file=sys.stdout)
    return 0
