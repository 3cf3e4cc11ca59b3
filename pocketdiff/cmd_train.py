"""`pocketdiff train unet SPEC ...`, `pocketdiff train decoder SPEC ...`, `pocketdiff sample CHECKPOINT ...`.

docs/paper.md section 3 (UNet: flow matching, multi-level KD, step distillation) and section 2 (tiny decoder).
Thin: parse, call training.full_run / training.decoder / training.sample, print a summary. The training
loop's flags are the fields of training.config.LoopConfig (`add_config_flags`).
`train SPEC` (no subcommand) is `train unet SPEC` (pocketdiff/cli.py reads it so).
Data parallel: `torchrun --nproc_per_node N -m pocketdiff.cli train unet SPEC ...` (one process per device).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from pocketdiff.cli import UsageError
from search_space.errors import seed_arg
from search_space.outputs import check_output_dir, check_output_file
from training.budget import DECODER_RUN_BUDGET

TRAIN_COMMANDS = ("unet", "decoder")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a UNet (flow matching, KD, step distillation) or a decoder")
    t = p.add_subparsers(dest="command", metavar="<command>")
    unet_parser(t.add_parser("unet", help="train a UNet spec with rectified flow (KD, step distillation); "
                                          "`train SPEC` means `train unet SPEC`"))
    decoder_parser(t.add_parser("decoder", help="train a tiny decoder against a frozen encoder"))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    s = subparsers.add_parser("sample", help="write images from a trained checkpoint for a text prompt")
    s.add_argument("checkpoint", help="run folder or checkpoints/step_XXXXXXX folder")
    s.add_argument("--prompt", required=True, help='e.g. "a photo of a handwritten digit seven"')
    s.add_argument("--steps", type=int, default=None,
                   help="Euler steps (default: the run's sampler, e.g. 4 for a 4-step student; else 4)")
    s.add_argument("-n", "--num", type=int, default=8, help="images (default 8), written as one grid")
    s.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (default: the run's)")
    s.add_argument("--seed", type=seed_arg, default=0)
    s.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--vae", default=None, metavar="PATH", help="VAE folder to decode latents (latent data only)")
    s.add_argument("-o", "--out", default="sample.png", help="output PNG (default sample.png)")
    s.set_defaults(func=cmd_sample)


def add_config_flags(p: argparse.ArgumentParser, config_type: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of a config dataclass: --field-name, typed and defaulted by the field, with the help
    line and allowed values of its metadata (training/config.py's `flag`). `skip`: fields set another way."""
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_line = f.metadata.get("help")
        if hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           help=f"{help_line} (default: %(default)s)" if help_line else None)
        else:
            p.add_argument(flag, type=hints[f.name], default=f.default, choices=f.metadata.get("choices"),
                           help=f"{help_line} (default: %(default)s)" if help_line else None)


def config_from_flags(a: argparse.Namespace, config_type: type, **given):
    """The config the flags describe; `given` sets the fields that have no flag of their own."""
    return config_type(**{f.name: getattr(a, f.name) for f in dataclasses.fields(config_type)
                          if f.name not in given}, **given)


def unet_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from training.config import LoopConfig, StepDistillConfig

    p.description = ("Train a UNet spec with rectified flow (optionally with KD or step distillation); resumable; "
                     "run under torchrun for DDP.")
    p.add_argument("spec", help="preset name, spec JSON or a study's winner.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--data", default="mnist5k", help="mnist5k | imagenet:PATH | folder:PATH | latents:PATH")
    p.add_argument("--encoder", default="minilm", help="text encoder: minilm or a local CLIP/T5 folder")
    p.add_argument("--as-is", action="store_true",
                   help="train the spec itself, not its proxy (it must fit the data and text encoder)")
    p.add_argument("--out", required=True, help="run folder (checkpoints/, metrics.jsonl, tb/, samples/)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from --out's latest checkpoint (or the one given)")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="checkpoint and exit at this step; --resume continues (time-sliced jobs)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_config_flags(p.add_argument_group("training loop"), LoopConfig)
    kd = p.add_argument_group("distillation")
    kd.add_argument("--teacher", default=None, help="trained run/checkpoint of ours or a diffusers model folder")
    kd.add_argument("--kd", default="timestep", choices=("timestep", "fixed"),
                    help="KD weighting: timestep-aware (loss magnitudes per timestep bin) or fixed")
    kd.add_argument("--kd-shape", type=float, default=1.0,
                    help="timestep-aware shape: task weight a_t = density(t)^shape (default 1)")
    kd.add_argument("--kd-share", type=float, default=None,
                    help="fixed weighting's KD share (default: the timestep-aware shape's average, matched)")
    kd.add_argument("--no-feature-kd", action="store_true", help="output KD only")
    kd.add_argument("--teacher-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    kd.add_argument("--init", default=None, help="start from this checkpoint's EMA weights")
    sd = p.add_argument_group("step distillation")
    sd.add_argument("--step-distill", type=int, default=None, metavar="STEPS",
                    help="adversarial step distillation to a STEPS-step sampler (needs --init and --teacher)")
    add_config_flags(sd, StepDistillConfig, skip=("sampler_steps",))
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=train_unet_cmd)
    return p


def decoder_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.description = ("Train a tiny decoder against a frozen encoder (MSE + LPIPS + patch GAN); compares with the "
                     "encoder's own decoder on held-out crops.")
    p.add_argument("spec", help="decoder preset name or spec JSON")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--data", default="sample-images", help="sample-images | folder:PATH")
    p.add_argument("--encoder", default="tiny-ae", help="tiny-ae | vae:PATH (diffusers AutoencoderKL folder)")
    p.add_argument("--budget", default=str(DECODER_RUN_BUDGET), help="60s, 2m or 500steps")
    p.add_argument("--ae-steps", type=int, default=None, help="training steps of the tiny-ae stand-in encoder")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--out", required=True, help="folder for decoder.safetensors, record.json, reconstructions.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=train_decoder_cmd)
    return p


def train_unet_cmd(a: argparse.Namespace) -> int:
    from search_space import UNetSpec, load_spec
    from search_space.compact import encode
    from training.config import LoopConfig, StepDistillConfig
    from training.data import load_data
    from training.checkpoint import read_manifest
    from training.full_run import distillation_objective, prepare_spec, train_full
    from training.kd_scaling import KDWeighting
    from training.text import class_prompt_embeddings

    config = config_from_flags(a, LoopConfig)
    config.validate()  # every flag checked before anything is loaded or printed
    step_distill = None
    if a.step_distill is not None:
        step_distill = config_from_flags(a, StepDistillConfig, sampler_steps=a.step_distill)
        step_distill.validate()
        config = dataclasses.replace(config, sample_steps=a.step_distill, cfg_scale=1.0)  # guidance is distilled in
    check_output_dir(a.out, "--out")
    spec = load_spec(a.spec, a.overrides)
    if not isinstance(spec, UNetSpec):
        raise UsageError(f"{a.spec} is a {spec.kind} spec; train it with `pocketdiff train decoder`")
    main = int(os.environ.get("RANK", "0")) == 0
    say = (lambda *x: print(*x, file=sys.stderr, flush=True)) if main and not a.quiet else (lambda *x: None)
    data = load_data(a.data)
    prompts = class_prompt_embeddings(data.class_names, a.encoder)
    train_spec, mapping = prepare_spec(spec, data, prompts, a.as_is)
    if a.init is not None:
        read_manifest(a.init)  # a damaged --init checkpoint is one line before the run says anything
    objective, teacher_line = distillation_objective(  # a teacher or --init that cannot load: one line, no more
        a.teacher, train_spec, prompts, data, KDWeighting(a.kd, a.kd_shape, a.kd_share), not a.no_feature_kd,
        a.teacher_dtype, step_distill, a.init)
    say(f"spec {spec.spec_id} {encode(spec)}")
    if mapping is not None:
        say(f"  -> proxy {train_spec.spec_id} {encode(train_spec)} (channels {mapping['channels'][0]} -> "
            f"{mapping['channels'][1]}; --as-is trains the spec itself)")
    if teacher_line:
        say(teacher_line)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    say(f"data {data.name} ({data.train_count} train)  steps {a.steps}  global batch "
        f"{a.batch_size * a.grad_accum * world} ({world} process(es))  out {a.out}")
    meta = {"source_spec": json.loads(spec.to_json()), "source_spec_id": spec.spec_id, "proxy": mapping,
            "latent_scaling": [data.info.get("scaling_factor"), data.info.get("shift_factor")]
            if data.kind == "latent" else None}
    result = train_full(train_spec, data, prompts, a.out, config, objective, a.resume, meta, a.init, a.device,
                        progress=not a.quiet, stop_at=a.stop_at)
    if main:
        print(f"{result.status}: step {result.step}  checkpoint {result.checkpoint}")
        for k, v in result.metrics.items():
            print(f"  {k:16s} {v:.4g}" if isinstance(v, float) else f"  {k:16s} {v}")
        print(f"  logs: {Path(a.out) / 'metrics.jsonl'}, TensorBoard: tensorboard --logdir {Path(a.out) / 'tb'}")
    return 0 if result.status == "ok" or result.status.startswith("stopped") else 1


def cmd_sample(a: argparse.Namespace) -> int:
    from training.sample import sample_prompt, save_grid

    check_output_file(a.out, "-o")
    samples = sample_prompt(a.checkpoint, a.prompt, a.steps, a.num, a.cfg_scale, a.seed, use_ema=not a.raw,
                            vae=a.vae)
    save_grid(samples.images, a.out)
    print(f"wrote {a.num} image(s), {samples.steps} steps, cfg {samples.cfg_scale:g}, spec {samples.spec_id} "
          f"step {samples.step} -> {a.out}")
    return 0


def train_decoder_cmd(a: argparse.Namespace) -> int:
    from search_space import DecoderSpec, load_spec
    from training.decoder import train_decoder_run

    spec = load_spec(a.spec, a.overrides)
    if not isinstance(spec, DecoderSpec):
        raise UsageError(f"{a.spec} is a {spec.kind} spec; `pocketdiff train decoder` trains decoder specs")
    check_output_dir(a.out, "--out")
    record = train_decoder_run(spec, a.data, a.encoder, a.budget, a.seed, a.out, a.ae_steps, progress=not a.json)
    if a.json:
        print(json.dumps(record, default=str))
        return 0
    for notice in record["notices"]:
        print(f"notice: {notice}")
    print(f"decoder {spec.spec_id}: {record['steps']} steps in {record['seconds']:.1f} s against encoder "
          f"{record['encoder']}")
    print(f"  {'':10s} {'decoder':>10s} {'baseline':>10s}")
    for key in ("psnr", "val_loss", "lpips"):
        if key in record["metrics"]:
            base = record["baseline"].get(key)
            print(f"  {key:10s} {record['metrics'][key]:10.4f} " + (f"{base:10.4f}" if base is not None else f"{'-':>10s}"))
    print(f"  wrote {record['out']}/decoder.safetensors, record.json, reconstructions.png")
    return 0
