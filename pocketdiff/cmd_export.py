"""`pocketdiff export coreml NAME|spec.json|--torchvision NAME|--timm NAME|--arch ARCH -o out.mlpackage`: Core ML
export."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from latency_models.targets import DEFAULT_TARGET, TARGETS

    export = sub.add_parser("export", help="export a design for on-device runtimes")
    esub = export.add_subparsers(dest="command", metavar="<command>")
    c = esub.add_parser("coreml", help="fp16 Core ML mlprogram with fixed shapes (cached by spec_id + shape + target)")
    add_model_arguments(c)
    c.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET, help="minimum deployment target")
    c.add_argument("--attention", choices=("math", "split_einsum"), default="math",
                   help="attention form: math (one matmul over all heads; what the latency walk prices) or "
                        "split_einsum (per head and per 512 queries, Apple's recommended Neural Engine form)")
    c.add_argument("-o", "--out", help="where to write the .mlpackage (default: only the cache)")
    c.add_argument("--no-cache", action="store_true", help="convert again even if a cached package exists")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--arch", metavar="ARCH", help="an architecture string of the measurement schema with --input, "
                   "e.g. microbench:conv3x3-c256-l8 --input 1x256x64x64 (what `latency plan` writes)")
    c.add_argument("--checkpoint", metavar="RUN", help="export a trained run's EMA weights (`pocketdiff train` "
                   "folder or checkpoint); the spec comes from the checkpoint")
    c.set_defaults(func=cmd_export_coreml)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model flags shared by export and latency commands."""
    p.add_argument("spec", nargs="?", help="preset name or spec JSON file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the spec, e.g. --set stages.1.channels=512 (repeatable)")
    p.add_argument("--torchvision", metavar="NAME", help="a torchvision architecture, e.g. resnet50")
    p.add_argument("--timm", metavar="NAME", help="a timm architecture, e.g. fastvit_t8 (reparameterized)")
    p.add_argument("--input", metavar="SHAPE", help="input shape of a library model, e.g. 1x3x224x224")
    p.add_argument("--latent", type=int, default=128, help="latent size of a spec (default 128 = 1024 px)")
    p.add_argument("--batch", type=int, default=1, help="batch size of a spec (default 1)")


def model_target(args):
    """The one model the flags name, as "preset-or-path" (a Spec when --set changes it) / "timm:NAME" /
    "torchvision:NAME", and its shape."""
    from latency_models.measurements import parse_shape
    from pocketdiff.cli import UsageError
    from search_space import load_spec

    if args.overrides and not args.spec:
        raise UsageError("--set changes a spec: name a preset or spec JSON (a checkpoint's or a library model's "
                         "architecture is fixed)")

    chosen = [x for x in (args.spec, args.torchvision, args.timm) if x]
    if len(chosen) != 1:
        raise UsageError("name exactly one model: a preset or spec JSON, --torchvision NAME or --timm NAME")
    check_size_flags(args)
    if args.spec:
        if args.input:
            raise UsageError("--input is for --torchvision / --timm models; specs take --latent and --batch")
        return (load_spec(args.spec, args.overrides) if args.overrides else args.spec), None
    if not args.input:
        raise UsageError("library models need --input, e.g. --input 1x3x224x224")
    kind = "torchvision" if args.torchvision else "timm"
    return f"{kind}:{args.torchvision or args.timm}", parse_shape(args.input)


def check_size_flags(args) -> None:
    """--latent and --batch within their stated ranges (search_space/limits.py, training/config.py)."""
    from pocketdiff.cli import UsageError
    from search_space.limits import check_latent, check_number
    from training.config import MAX_BATCH

    check_latent(args.latent, "--latent", UsageError)
    check_number(args.batch, "--batch", 1, MAX_BATCH, whole=True, error=UsageError)


def cmd_export_coreml(args) -> int:
    from latency_models.export import export_coreml, model_for

    check_out_path(args.out)
    check_size_flags(args)
    if args.checkpoint:
        src = checkpoint_source(args)
    elif args.arch:
        src = arch_export_source(args)
    else:
        target, shape = model_target(args)
        kind, _, name = target.partition(":")
        if shape is None:
            src = model_for(target, latent=args.latent, batch=args.batch)
        else:
            src = model_for(**{kind: name}, input_shape=shape)
    if not args.json:
        print(f"exporting {src.label} (model id {src.model_id}) for {args.target}, {args.attention} attention, inputs "
              + ", ".join("x".join(map(str, x.shape)) for x in src.inputs if x is not None), flush=True)
    try:
        result = export_coreml(src, args.target, args.out, use_cache=not args.no_cache, attention=args.attention)
    finally:
        del src  # drop the fp32 weights as soon as the conversion is done
    if args.json:
        print(json.dumps({"path": str(result.path), "model_id": result.model_id, "shape": result.shape,
                          "target": result.target, "cached": result.cached, "seconds": result.seconds,
                          "attention": result.attention}))
    else:
        how = "reused the cached conversion" if result.cached else "converted"
        print(f"{how} in {result.seconds:.1f} s -> {result.path}")
    return 0


def check_out_path(out: str | None) -> None:
    """Refuse, before any work, an output the export would have to delete: only an earlier .mlpackage is replaced."""
    from pathlib import Path

    from pocketdiff.cli import UsageError
    from search_space.outputs import check_output_file

    if out is None:
        return
    path = Path(out)
    if path.suffix != ".mlpackage":
        raise UsageError(f"-o {out}: a Core ML mlprogram is a folder named *.mlpackage; write e.g. -o "
                         f"{path.with_suffix('.mlpackage')}")
    if path.exists() and not (path.is_dir() and (path / "Manifest.json").is_file()):
        raise UsageError(f"-o {out} exists and is not a Core ML package (no Manifest.json); it is not replaced: "
                         f"remove it or choose another path")
    check_output_file(path, "-o", package=True)  # its folder can be made and written


def arch_export_source(args):
    """A rebuildable architecture string (latency_models/archs.py) at --input, with random weights."""
    from latency_models.archs import arch_source, is_rebuildable
    from latency_models.measurements import parse_shape
    from pocketdiff.cli import UsageError

    if args.spec or args.torchvision or args.timm or args.overrides:
        raise UsageError("--arch names the model; do not name a preset, spec, --torchvision or --timm as well")
    if not is_rebuildable(args.arch):
        raise UsageError(f"--arch {args.arch!r} is not an architecture string; write e.g. "
                         f"microbench:conv3x3-c256-l8 (see `pocketdiff latency plan`)")
    if not args.input:
        raise UsageError(f"--arch {args.arch} needs --input, e.g. --input 1x256x64x64")
    return arch_source(args.arch, parse_shape(args.input), device="cpu")


def checkpoint_source(args):
    """A trained checkpoint as an export source: its spec, its EMA weights, a model id that names the weights."""
    import dataclasses

    from latency_models.export import model_for
    from pocketdiff.cli import UsageError
    from training.checkpoint import load_trained

    if args.spec or args.torchvision or args.timm or args.overrides:
        raise UsageError("--checkpoint takes the spec from the checkpoint; do not name a model or --set as well")
    model, spec, manifest = load_trained(args.checkpoint)
    src = model_for(spec, latent=args.latent, batch=args.batch)
    src.module.load_state_dict(model.state_dict())
    weights = manifest["files"]["model.safetensors"][:8]  # the Core ML cache must not reuse another run's weights
    return dataclasses.replace(src, model_id=f"{spec.spec_id}-w{weights}", label=f"{spec.spec_id}@step{manifest['step']}")
