"""Multi-level knowledge distillation from a teacher of another architecture (docs/paper.md section 3).

The objective `KDObjective` trains the student with three terms against a frozen teacher (training/teachers.py):
- the task loss (plain rectified flow);
- output KD: student velocity vs teacher velocity at the same x_t, t and class prompt;
- feature KD, paired by depth (monotone): the student's taps in forward order (last layer of every down stage,
  the mid block, last layer of every up stage) each take the teacher block at the same relative depth (early
  teacher blocks -> down/mid, late -> up); the teacher map is average-pooled (or interpolated) to the student
  map's resolution and standardised per channel with running statistics (transformer states carry a few huge
  channels that would otherwise own the MSE); a learned 1x1 conv maps student width to teacher width.
Weighting (training/kd_scaling.py): S(L_task, L_kd_out) + S(L_task, L_kd_feat) with loss magnitudes per
timestep bin, or the fixed weighting at the same KD share. Gradient norms of each term are logged.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from search_space import UNetSpec
from search_space.init import build_paired

from .conditioning import Conditioner, velocity
from .distributed import DistContext
from .flow import interpolate, velocity_target
from .kd_scaling import KDWeighting, LossMagnitudes
from .objectives import Objective, per_sample_mean_square
from .teachers import Teacher, TeacherConditioner, student_taps
from .text import PromptEmbeddings

FEATURE_MOMENTUM = 0.99  # [choose] running per-channel statistics of teacher features (about 100 steps)
EPS = 1e-6


def monotone_pairs(n_student: int, n_teacher: int) -> list[int]:
    """For each student tap (depth order) the teacher tap at the same relative depth: non-decreasing, first to
    first, last to last."""
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def resize_to(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A teacher map at the student map's resolution: average-pooled down, bilinear up."""
    if feature.shape[-2:] == size:
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


class FeatureStandardizer(nn.Module):
    """Running per-channel mean and variance of one teacher feature map; standardises it."""

    def __init__(self, channels: int, momentum: float = FEATURE_MOMENTUM):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, f: torch.Tensor) -> None:
        mean, var = f.mean(dim=(0, 2, 3)), f.var(dim=(0, 2, 3), unbiased=False)
        m = self.momentum if self.seen > 0 else 0.0  # the first batch sets the statistics
        self.mean.mul_(m).add_((1 - m) * mean)
        self.var.mul_(m).add_((1 - m) * var)
        self.seen += 1

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mean.view(1, -1, 1, 1)) / (self.var.view(1, -1, 1, 1) + EPS).sqrt()


class KDObjective(Objective):
    """Task loss + output KD + feature KD, combined by the timestep-aware scaling or a fixed weighting."""

    kind = "kd"

    def __init__(self, teacher: Teacher, prompts: PromptEmbeddings, resolution: int, size: int,
                 weighting: str | KDWeighting = "timestep", feature_kd: bool = True,
                 class_names: list[str] | None = None):
        self.weighting = weighting if isinstance(weighting, KDWeighting) else KDWeighting(weighting)
        self.teacher, self.prompts, self.resolution, self.size = teacher, prompts, resolution, size
        self.feature_kd, self.class_names = feature_kd, class_names
        self.projections = nn.ModuleList()
        self.standardizers = nn.ModuleList()
        self.pairs: list[tuple[int, int]] = []  # (student tap index, teacher tap index)
        self.magnitudes = LossMagnitudes()
        self._student_feats: dict[str, torch.Tensor] = {}

    def trainable(self) -> list[nn.Module]:
        return [self.projections]

    def attach(self, model: nn.Module, device: torch.device, ctx: DistContext) -> None:
        spec: UNetSpec = model.spec
        self.teacher.to(device)
        self.tcond = TeacherConditioner(self.teacher.prompt_table(self.class_names, self.prompts), self.resolution,
                                        device)
        if ctx.enabled:
            self.magnitudes.reduce = _all_reduce_pair
        self.taps = student_taps(model)
        modules = dict(model.named_modules())
        for name in self.taps:
            modules[name].register_forward_hook(self._hook(name))
        if not self.feature_kd:
            self.teacher.use_taps([])
            return
        picks = monotone_pairs(len(self.taps), len(self.teacher.candidates))
        self.teacher.use_taps([self.teacher.candidates[j] for j in picks])
        self.pairs = list(zip(range(len(self.taps)), range(len(picks))))
        # One dry pass at the data's size gives every feature's width and resolution.
        x = torch.zeros(1, spec.latent_channels, self.size, self.size, device=device)
        t = torch.full((1,), 0.5, device=device)
        cond = Conditioner(spec, self.prompts, self.resolution, device)
        zero = torch.zeros(1, dtype=torch.long, device=device)
        with torch.no_grad():
            velocity(model, cond, x, t, zero)
            _, t_feats = self.teacher(x, t, *self.tcond(zero))
        for i, j in self.pairs:  # paired by the run's seed and the student tap: the same on every rank
            s = self._student_feats[self.taps[i]]
            self.projections.append(build_paired(partial(nn.Conv2d, s.shape[1], t_feats[j].shape[1], 1), self.seed,
                                                 f"kd.projections.{self.taps[i]}", device))
            self.standardizers.append(FeatureStandardizer(t_feats[j].shape[1]).to(device))

    def _hook(self, name: str):
        def hook(module, args, output):
            self._student_feats[name] = output
        return hook

    def feature_loss(self, t_feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-sample feature KD (B,) over all depth pairs, and the student maps it reads (for gradient norms)."""
        terms, maps = [], []
        for proj, std, (i, j) in zip(self.projections, self.standardizers, self.pairs):
            s = self._student_feats[self.taps[i]]
            maps.append(s)
            tf = resize_to(t_feats[j], s.shape[-2:])
            std.update(tf)
            terms.append(per_sample_mean_square(proj(s.float()) - std(tf)))
        return torch.stack(terms).mean(0), maps

    def loss(self, model, cond, x0, noise, t, labels, autocast):
        x_t = interpolate(x0, noise, t)
        pred = velocity(model, cond, x_t, t, labels, autocast)
        task = per_sample_mean_square(pred - velocity_target(x0, noise))
        with torch.no_grad():
            v_teacher, t_feats = self.teacher(x_t, t, *self.tcond(labels))
        kd_out = per_sample_mean_square(pred - v_teacher)
        m = self.magnitudes
        m.update("task", t, task)
        m.update("kd_out", t, kd_out)
        # S(L_task, L_kd) = task part + KD part; each S carries the task part once (the paper's sum of two S).
        loss, kd_value = self.weighting.combine(task, kd_out, t, m, "task", "kd_out")
        task_part = (self.weighting.task_weights(t).to(task.dtype) * task).mean()
        logs = {"loss_task": task.mean().detach(), "loss_kd_out": kd_out.mean().detach()}
        terms = {"task": task_part, "kd_out": loss - task_part}
        wrt = [pred]
        if self.feature_kd and self.pairs:
            kd_feat, maps = self.feature_loss(t_feats)
            m.update("kd_feat", t, kd_feat)
            s_feat, kd_feat_value = self.weighting.combine(task, kd_feat, t, m, "task", "kd_feat")
            terms["kd_feat"] = s_feat - task_part
            loss, kd_value = loss + s_feat, kd_value + kd_feat_value
            logs["loss_kd_feat"] = kd_feat.mean().detach()
            wrt += maps
        logs["kd_share"] = kd_value / loss.detach().clamp_min(EPS)
        logs.update(_grad_norms(terms, wrt))
        return loss, logs

    def identity(self) -> dict:
        return {"kind": self.kind, "teacher": self.teacher.identity(), "weighting": self.weighting.identity(),
                "feature_kd": self.feature_kd}

    def state_dict(self) -> dict:
        return {"magnitudes": self.magnitudes.state_dict(), "standardizers": self.standardizers.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.magnitudes.load_state_dict(state["magnitudes"])
        self.standardizers.load_state_dict(state["standardizers"])


def _grad_norms(terms: dict[str, torch.Tensor], wrt: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """||d term / d (student output and tapped features)|| per loss term: how hard each term pulls the student
    (a weighting whose KD pull grows without bound near the teacher shows here first)."""
    out = {}
    for name, term in terms.items():
        if not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, wrt, retain_graph=True, allow_unused=True)
        out[f"grad_{name}"] = torch.sqrt(sum(g.float().pow(2).sum() for g in grads if g is not None)).detach()
    return out


def _all_reduce_pair(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch.distributed as dist

    both = torch.cat([sums, counts])
    if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
        both = both.cuda()
    dist.all_reduce(both)
    both = both.cpu()
    return both[:len(sums)], both[len(sums):]
