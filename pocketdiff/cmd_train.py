"""`pocketdiff train [unet] SPEC ...`, `pocketdiff train decoder SPEC ...`, `pocketdiff sample CHECKPOINT ...`.

SNAPGEN.md section 3 (UNet: flow matching, multi-level KD, step distillation) and section 2 (tiny decoder).
Thin: parse, call training.full / training.distill / training.step_distill / training.decoder, print a summary.
Data parallel: `torchrun --nproc_per_node N -m pocketdiff.cli train SPEC ...` (one process per device).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pocketdiff.cli import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a UNet (flow matching, KD, step distillation) or a decoder",
                              add_help=False, description="pocketdiff train [unet] SPEC ... | train decoder SPEC ...")
    p.add_argument("-h", "--help", action=_TrainHelp, nargs=0, help="show the unet and decoder options")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="[unet] SPEC [options] | decoder SPEC [options]")
    p.set_defaults(func=cmd_train)
    s = subparsers.add_parser("sample", help="write images from a trained checkpoint for a text prompt")
    s.add_argument("checkpoint", help="run folder or checkpoints/step_XXXXXXX folder")
    s.add_argument("--prompt", required=True, help='e.g. "a photo of a handwritten digit seven"')
    s.add_argument("--steps", type=int, default=None,
                   help="Euler steps (default: the run's sampler, e.g. 4 for a 4-step student; else 4)")
    s.add_argument("-n", "--num", type=int, default=8, help="images (default 8), written as one grid")
    s.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (default: the run's)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--vae", default=None, metavar="PATH", help="VAE folder to decode latents (latent data only)")
    s.add_argument("-o", "--out", default="sample.png", help="output PNG (default sample.png)")
    s.set_defaults(func=cmd_sample)


class _TrainHelp(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(unet_parser().format_help())
        print(decoder_parser().format_usage())
        parser.exit(0)


def unet_parser() -> argparse.ArgumentParser:
    from training.full import FullConfig

    d = FullConfig()
    p = argparse.ArgumentParser(prog="pocketdiff train [unet]",
                                description="Train a UNet spec with rectified flow (optionally with KD or step "
                                            "distillation); resumable; run under torchrun for DDP.")
    p.add_argument("spec", help="preset name, spec JSON or a study's winner.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--data", default="mnist5k", help="mnist5k | imagenet:PATH | folder:PATH | latents:PATH")
    p.add_argument("--encoder", default="minilm", help="text encoder: minilm or a local CLIP/T5 folder")
    p.add_argument("--as-is", action="store_true",
                   help="train the spec itself, not its proxy (it must fit the data and text encoder)")
    p.add_argument("--out", required=True, help="run folder (checkpoints/, metrics.jsonl, tb/, samples/)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from --out's latest checkpoint (or the one given)")
    p.add_argument("--steps", type=int, default=d.steps, help="total steps (the LR schedule's length)")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="checkpoint and exit at this step; --resume continues (time-sliced jobs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process and micro-batch")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--schedule", default=d.schedule, choices=("constant", "cosine", "linear"))
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--sample-every", type=int, default=d.sample_every, help="0 = only at the end")
    p.add_argument("--fd-samples", type=int, default=d.fd_samples, help="domain FD of N samples when sampling")
    p.add_argument("--sample-steps", type=int, default=d.sample_steps)
    p.add_argument("--cfg-scale", type=float, default=d.cfg_scale)
    p.add_argument("--autocast", default=d.autocast, choices=("auto", "on", "off"), help="bf16 (auto: GPU)")
    p.add_argument("--grad-checkpoint", default=d.grad_checkpoint, choices=("auto", "on", "off"),
                   help="activation checkpointing (auto: GPU)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
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
    kd.add_argument("--step-distill", type=int, default=None, metavar="STEPS",
                    help="adversarial step distillation to a STEPS-step sampler (needs --init and --teacher)")
    kd.add_argument("--init", default=None, help="start from this checkpoint's EMA weights")
    kd.add_argument("--adv-weight", type=float, default=None, help="generator GAN loss weight (step distillation)")
    kd.add_argument("--adv-start", type=float, default=None,
                    help="share of the run that is KD only before the discriminator joins (default 0.5)")
    kd.add_argument("--teacher-cfg", type=float, default=None,
                    help="guidance of the teacher velocity distilled into the student (default 2; the student "
                         "then samples at CFG 1)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def decoder_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pocketdiff train decoder",
                                description="Train a tiny decoder against a frozen encoder (MSE + LPIPS + patch "
                                            "GAN); compares with the encoder's own decoder on held-out crops.")
    p.add_argument("spec", help="decoder preset name or spec JSON")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--data", default="sample-images", help="sample-images | folder:PATH")
    p.add_argument("--encoder", default="tiny-ae", help="tiny-ae | vae:PATH (diffusers AutoencoderKL folder)")
    p.add_argument("--budget", default="60s", help="60s, 2m or 500steps")
    p.add_argument("--ae-steps", type=int, default=None, help="training steps of the tiny-ae stand-in encoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for decoder.safetensors, record.json, reconstructions.png")
    p.add_argument("--json", action="store_true")
    return p


def cmd_train(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "decoder":
        return train_decoder_cmd(decoder_parser().parse_args(argv[1:]))
    if argv and argv[0] == "unet":
        argv = argv[1:]
    return train_unet_cmd(unet_parser().parse_args(argv))


def train_unet_cmd(a: argparse.Namespace) -> int:
    import torch

    from search_space import UNetSpec, load_spec
    from training.data import DataError, load_data
    from training.full import FullConfig, TrainError, init_distributed, prepare_spec, train_full
    from training.text import class_prompt_embeddings

    spec = load_spec(a.spec, a.overrides)
    if not isinstance(spec, UNetSpec):
        raise UsageError(f"{a.spec} is a {spec.kind} spec; train it with `pocketdiff train decoder`")
    main = int(os.environ.get("RANK", "0")) == 0
    say = (lambda *x: print(*x, file=sys.stderr, flush=True)) if main and not a.quiet else (lambda *x: None)
    try:
        data = load_data(a.data)
    except DataError as e:
        raise UsageError(str(e)) from None
    prompts = class_prompt_embeddings(data.class_names, a.encoder)
    try:
        train_spec, mapping = prepare_spec(spec, data, prompts, a.as_is)
    except TrainError as e:
        raise UsageError(str(e)) from None
    say(f"spec {spec.spec_id} {spec.compact}")
    if mapping is not None:
        say(f"  -> proxy {train_spec.spec_id} {train_spec.compact} (channels {mapping['channels'][0]} -> "
            f"{mapping['channels'][1]}; --as-is trains the spec itself)")
    config = FullConfig(
        steps=a.steps, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr, warmup_steps=a.warmup_steps,
        schedule=a.schedule, ema_decay=a.ema_decay, seed=a.seed, checkpoint_every=a.checkpoint_every,
        keep_checkpoints=a.keep_checkpoints, log_every=a.log_every, sample_every=a.sample_every,
        fd_samples=a.fd_samples, sample_steps=a.sample_steps, cfg_scale=a.cfg_scale, autocast=a.autocast,
        grad_checkpoint=a.grad_checkpoint)
    try:
        config.validate()
    except TrainError as e:
        raise UsageError(str(e)) from None
    objective = None
    if a.step_distill is not None or a.teacher is not None:
        from dataclasses import replace

        from training.distill import KDObjective, TeacherError, check_teacher, load_teacher
        from training.kd_scaling import KDWeighting
        from training.step_distill import StepDistillConfig, StepDistillError, StepDistillObjective

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.teacher_dtype]
        if a.teacher is None:
            raise UsageError("--step-distill needs --teacher (the multi-step model, usually the --init run)")
        try:
            sd = None
            if a.step_distill is not None:
                if a.init is None:
                    raise UsageError("--step-distill needs --init CHECKPOINT (the trained multi-step model)")
                given = {"adv_weight": a.adv_weight, "adv_start": a.adv_start, "teacher_cfg": a.teacher_cfg}
                sd = StepDistillConfig(sampler_steps=a.step_distill,
                                       **{k: v for k, v in given.items() if v is not None})
                sd.validate()
            weighting = KDWeighting(a.kd, a.kd_shape, a.kd_share)
            teacher = load_teacher(a.teacher, dtype)
            check_teacher(teacher, train_spec, prompts, data.size, data.class_names)
        except (TeacherError, StepDistillError, ValueError) as e:
            raise UsageError(str(e)) from None
        if sd is not None:
            objective = StepDistillObjective(teacher, prompts, data.resolution, data.size, sd, data.class_names)
            config = replace(config, sample_steps=a.step_distill, cfg_scale=1.0)  # guidance is distilled in
            say(f"teacher {teacher.description}  {sd.sampler_steps}-step sampler, teacher CFG {sd.teacher_cfg:g}, "
                f"student CFG 1")
        else:
            objective = KDObjective(teacher, prompts, data.resolution, data.size, weighting, not a.no_feature_kd,
                                    data.class_names)
            say(f"teacher {teacher.description}  weighting {weighting.identity()}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    say(f"data {data.name} ({data.train_count} train)  steps {a.steps}  global batch "
        f"{a.batch_size * a.grad_accum * world} ({world} process(es))  out {a.out}")
    meta = {"source_spec": json.loads(spec.to_json()), "source_spec_id": spec.spec_id, "proxy": mapping,
            "latent_scaling": [data.info.get("scaling_factor"), data.info.get("shift_factor")]
            if data.kind == "latent" else None}
    from training.full import CheckpointError
    try:
        result = train_full(train_spec, data, prompts, a.out, config, objective, a.resume, meta, a.init, a.device,
                            progress=not a.quiet, stop_at=a.stop_at)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    if main:
        print(f"{result.status}: step {result.step}  checkpoint {result.checkpoint}")
        for k, v in result.metrics.items():
            print(f"  {k:16s} {v:.4g}" if isinstance(v, float) else f"  {k:16s} {v}")
        print(f"  logs: {Path(a.out) / 'metrics.jsonl'}, TensorBoard: tensorboard --logdir {Path(a.out) / 'tb'}")
    return 0 if result.status == "ok" or result.status.startswith("stopped") else 1


def cmd_sample(a: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F
    from torchvision.utils import save_image

    from training.flow import euler_sample
    from training.full import CheckpointError, load_trained
    from training.text import PromptEmbeddings, encode_prompts
    from training.trainer import Conditioner, velocity
    from training.flow import cfg_velocity

    if (a.steps is not None and a.steps < 1) or a.num < 1:
        raise UsageError("--steps and --num must be >= 1")
    try:
        model, spec, manifest = load_trained(a.checkpoint, use_ema=not a.raw)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    meta = manifest["meta"]
    if a.steps is None:
        a.steps = int(meta.get("sample_steps", meta.get("config", {}).get("sample_steps", 4)))
    if meta["data_kind"] == "latent" and a.vae is None:
        raise UsageError("this model was trained on VAE latents; pass --vae PATH to decode them")
    tokens, pooled = encode_prompts([a.prompt, ""], meta["encoder"])
    prompts = PromptEmbeddings(tokens=tokens, pooled=pooled, encoder=meta["encoder"])
    cond = Conditioner(spec, prompts, meta["resolution"], torch.device("cpu"))
    scale = meta.get("cfg_scale", meta.get("config", {}).get("cfg_scale", 1.0)) if a.cfg_scale is None else a.cfg_scale
    y, null = torch.zeros(a.num, dtype=torch.long), torch.ones(a.num, dtype=torch.long)

    def pair(x, t):
        return velocity(model, cond, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)

    fn = (lambda x, t: velocity(model, cond, x, t, y)) if scale == 1.0 else cfg_velocity(pair, scale)
    gen = torch.Generator().manual_seed(a.seed)
    noise = torch.randn((a.num, meta["channels"], meta["size"], meta["size"]), generator=gen)
    x = euler_sample(fn, noise, a.steps)
    if meta["data_kind"] == "latent":
        from training.data import load_vae
        vae = load_vae(a.vae)
        s, shift = meta["latent_scaling"]
        with torch.no_grad():
            img = vae.decode(x / s + shift).sample
    else:
        img = F.pixel_shuffle(x, meta["patch"]) if meta["patch"] > 1 else x
    img = (img.clamp(-1, 1) + 1) / 2
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_image(img, a.out, nrow=min(a.num, 8))
    print(f"wrote {a.num} image(s), {a.steps} steps, cfg {scale:g}, spec {spec.spec_id} step {manifest['step']} "
          f"-> {a.out}")
    return 0


def train_decoder_cmd(a: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from evaluators.decoder_quality import _save_grid
    from search_space import DecoderSpec, load_spec
    from training.decoder import DecoderDataError, load_encoder, load_patches, train_decoder

    spec = load_spec(a.spec, a.overrides)
    if not isinstance(spec, DecoderSpec):
        raise UsageError(f"{a.spec} is a {spec.kind} spec; `pocketdiff train decoder` trains decoder specs")
    try:
        patches = load_patches(a.data, seed=0)
        kw = {} if a.ae_steps is None else {"ae_steps": a.ae_steps}
        enc = load_encoder(a.encoder, patches, spec.latent_channels, len(spec.channels), seed=0,
                           progress=not a.json, **kw)
        result = train_decoder(spec, patches, enc, a.budget, a.seed)
    except DecoderDataError as e:
        raise UsageError(str(e)) from None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, out / "decoder.safetensors",
              metadata={"spec": spec.to_json(), "spec_id": spec.spec_id, "encoder": enc.name})
    _save_grid(result.model, enc, patches, out / "reconstructions.png")
    record = {"spec_id": spec.spec_id, "spec": json.loads(spec.to_json()), "encoder": enc.name, "data": a.data,
              "budget": str(a.budget), "seed": a.seed, "steps": result.steps, "seconds": round(result.seconds, 2),
              "metrics": result.metrics, "baseline": enc.baseline, "notices": result.notices,
              "psnr_vs_baseline": result.metrics["psnr"] - enc.baseline["psnr"], "history": result.history}
    (out / "record.json").write_text(json.dumps(record, indent=1, default=str))
    if a.json:
        print(json.dumps(record, default=str))
        return 0
    for notice in result.notices:
        print(f"notice: {notice}")
    print(f"decoder {spec.spec_id}: {result.steps} steps in {result.seconds:.1f} s against encoder {enc.name}")
    print(f"  {'':10s} {'decoder':>10s} {'baseline':>10s}")
    for key in ("psnr", "val_loss", "lpips"):
        if key in result.metrics:
            base = enc.baseline.get(key)
            print(f"  {key:10s} {result.metrics[key]:10.4f} " + (f"{base:10.4f}" if base is not None else f"{'-':>10s}"))
    print(f"  wrote {out}/decoder.safetensors, record.json, reconstructions.png")
    return 0
