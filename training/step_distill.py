"""Adversarial step distillation to a 4- or 8-step sampler that trains what the sampler does (docs/paper.md
section 3, step distillation: adversarial training combined with KD from a few-step teacher; docs/training.md).

The student starts from a trained multi-step model (`--init`) and is trained only at the N-step Euler grid
t_k = 1 - k/N, on the states the sampler meets there [choose, values in StepDistillConfig]:
- states: half of each batch is the forward process x_t = (1 - t) x_0 + t eps, the other half the student's
  OWN rollout: its N-step sampler run (no grad, CFG 1) from the same noise for k steps;
- few-step KD, at every sampler time with the same weight: the teacher integrates t_k -> t_{k+1} with
  `teacher_substeps` Euler steps of its GUIDED velocity (CFG `teacher_cfg`); the student's one step must land
  there, v* = (x_t - x_T(t_{k+1})) / (t_k - t_{k+1}). The student then samples at CFG 1 (the guidance is
  distilled into it), which the run's metadata records for `pocketdiff sample`;
- no task term by default: its target is the unguided velocity, which would pull against the distilled
  guidance (`task_weight` adds it back on the forward-process half);
- diffusion-GAN: the discriminator judges the state the sampler reaches NEXT, x_{t_{k+1}} = x_t - (t_k -
  t_{k+1}) v, against real data forward-noised to the same t_{k+1} (at the last step: the final sample against
  clean data). It reads frozen teacher features at t_{k+1}, standardised per sample (the raw features' scales
  differ by orders of magnitude between taps), through small trainable heads; hinge losses; the generator's
  gradient flows through the frozen teacher into the student. The discriminator trains from the first step;
  its generator term joins after a KD-only warm-up (`adv_start` of the run), so the student is never pushed by
  an untrained discriminator.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from search_space.init import build_paired

from .conditioning import velocity
from .config import StepDistillConfig
from .distributed import DistContext
from .flow import euler_timesteps, interpolate, velocity_target
from .objectives import Objective, per_sample_mean_square
from .teachers import Teacher, TeacherConditioner
from .text import PromptEmbeddings

HEAD_WIDTH = 32  # [choose] discriminator head width: small next to the frozen teacher features it reads
DISC_TAPS = 3  # [choose] teacher features the discriminator reads: first, middle and last of its depth
class DiscriminatorHeads(nn.Module):
    """One conv head per teacher feature map -> a logit per sample (mean over positions and heads)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.GroupNorm(1, c, affine=False),
                                                 nn.Conv2d(c, HEAD_WIDTH, 3, padding=1), nn.SiLU(),
                                                 nn.Conv2d(HEAD_WIDTH, 1, 1)) for c in widths)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([h(f).flatten(1).mean(1) for h, f in zip(self.heads, feats)]).mean(0)  # (B,)


class StepDistillObjective(Objective):
    kind = "step_distill"

    def __init__(self, teacher: Teacher, prompts: PromptEmbeddings, resolution: int, size: int,
                 config: StepDistillConfig = StepDistillConfig(), class_names: list[str] | None = None):
        config.validate()
        self.teacher, self.prompts, self.resolution, self.size = teacher, prompts, resolution, size
        self.config, self.class_names = config, class_names
        self.times = euler_timesteps(config.sampler_steps)  # t_0 = 1 ... t_N = 0
        self._pending = None
        self._step = 0
        self.budget_steps = None  # set by the loop: the adversarial warm-up is a share of the run

    @property
    def adv_from(self) -> int:
        return int(self.config.adv_start * (self.budget_steps or 0))

    def attach(self, model: nn.Module, device: torch.device, ctx: DistContext) -> None:
        self.device, self.ctx = device, ctx
        self.teacher.to(device)
        self.tcond = TeacherConditioner(self.teacher.prompt_table(self.class_names, self.prompts), self.resolution,
                                        device)
        n = len(self.teacher.candidates)
        picks = sorted({round(i * (n - 1) / max(1, DISC_TAPS - 1)) for i in range(DISC_TAPS)})
        self.teacher.use_taps([self.teacher.candidates[j] for j in picks])
        with torch.no_grad():
            x = torch.zeros(1, model.spec.latent_channels, self.size, self.size, device=device)
            _, feats = self.teacher(x, torch.full((1,), 0.5, device=device),
                                    *self.tcond(torch.zeros(1, dtype=torch.long, device=device)))
        widths = [f.shape[1] for f in feats]  # paired by the run's seed: the same heads on every rank
        self.disc = build_paired(lambda: DiscriminatorHeads(widths), self.seed, "step_distill.disc", device)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=self.config.disc_lr, betas=(0.5, 0.9),
                                       weight_decay=0.0)

    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return self.times[:-1][torch.randint(self.config.sampler_steps, (n,), generator=gen)]

    def step_index(self, t: torch.Tensor) -> torch.Tensor:
        return torch.round((1 - t) * self.config.sampler_steps).long()

    @torch.no_grad()
    def teacher_velocity(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The teacher's guided velocity v_u + s (v_c - v_u) (a dropped label gives the unconditional one)."""
        s = self.config.teacher_cfg
        if s == 1.0:
            return self.teacher(x, t, *self.tcond(labels))[0]
        null = torch.full_like(labels, self.tcond.null)
        v, _ = self.teacher(torch.cat([x, x]), torch.cat([t, t]), *self.tcond(torch.cat([labels, null])))
        v_c, v_u = v.chunk(2)
        return v_u + s * (v_c - v_u)

    @torch.no_grad()
    def few_step_target(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The velocity that carries x_t to where the teacher's fine guided trajectory is at the next grid time."""
        t_next = self.times[(self.step_index(t) + 1).cpu()].to(t.device)
        dt = t - t_next
        sub = dt / self.config.teacher_substeps
        x, tt = x_t, t.clone()
        for _ in range(self.config.teacher_substeps):
            x = x - sub.view(-1, 1, 1, 1) * self.teacher_velocity(x, tt, labels)
            tt = tt - sub
        return (x_t - x) / dt.view(-1, 1, 1, 1)  # = -(x_next - x_t) / dt: our velocity points from data to noise

    @torch.no_grad()
    def rollout(self, model, cond, noise: torch.Tensor, labels: torch.Tensor, k: torch.Tensor,
                autocast: bool) -> torch.Tensor:
        """The student's own N-step sampler (CFG 1) from `noise`, stopped for each sample after k[i] steps."""
        x = noise
        states = x.clone()
        was = model.training
        model.eval()
        for j in range(int(k.max()) if len(k) else 0):
            t = torch.full((len(x),), float(self.times[j]), device=x.device)
            x = x - float(self.times[j] - self.times[j + 1]) * velocity(model, cond, x, t, labels, autocast)
            states = torch.where((k == j + 1).view(-1, 1, 1, 1), x, states)
        model.train(was)
        return states

    def loss(self, model, cond, x0, noise, t, labels, autocast):
        b = len(x0)
        n_roll = int(round(self.config.rollout_share * b))
        x_t = interpolate(x0, noise, t)
        if n_roll:
            k = self.step_index(t[:n_roll])
            x_t = torch.cat([self.rollout(model, cond, noise[:n_roll], labels[:n_roll], k, autocast), x_t[n_roll:]])
        pred = velocity(model, cond, x_t, t, labels, autocast)
        target = self.few_step_target(x_t, t, labels)
        kd = per_sample_mean_square(pred - target)
        loss = kd.mean()
        logs = {"loss_kd_fewstep": kd.mean().detach()}
        if n_roll:
            logs["loss_kd_rollout"] = kd[:n_roll].mean().detach()
        if n_roll < b:
            task = per_sample_mean_square(pred[n_roll:] - velocity_target(x0[n_roll:], noise[n_roll:]))
            logs["loss_task"] = task.mean().detach()
            if self.config.task_weight:
                loss = loss + self.config.task_weight * task.mean()
        t_next = self.times[(self.step_index(t) + 1).cpu()].to(t.device)
        x_next = x_t - (t - t_next).view(-1, 1, 1, 1) * pred  # the state the sampler reaches next
        eps = torch.randn_like(x0)
        self._pending = (x0, x_next.detach(), eps, t_next, labels)
        if self.config.adv_weight > 0 and self._step >= self.adv_from:
            _, feats = self.teacher(x_next, t_next, *self.tcond(labels))  # grads flow to the student
            gen_loss = -self.disc(feats).mean()  # hinge generator loss
            loss = loss + self.config.adv_weight * gen_loss
            logs["loss_gen"] = gen_loss.detach()
        return loss, logs

    def aux_step(self, step: int) -> dict:
        self._step = step
        if self._pending is None or self.config.adv_weight <= 0:
            return {}
        x0, x_next, eps, t_next, labels = self._pending
        self._pending = None
        with torch.no_grad():
            _, real = self.teacher(interpolate(x0, eps, t_next), t_next, *self.tcond(labels))
            _, fake = self.teacher(x_next, t_next, *self.tcond(labels))
        d_loss = F.relu(1 - self.disc(real)).mean() + F.relu(1 + self.disc(fake)).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.ctx.average_grads(self.disc.parameters())
        self.opt_d.step()
        return {"loss_disc": float(d_loss.detach())}

    def identity(self) -> dict:
        return {"kind": self.kind, "teacher": self.teacher.identity(), **asdict(self.config)}

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt_d": self.opt_d.state_dict(), "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt_d.load_state_dict(state["opt_d"])
        self._step = state["step"]
