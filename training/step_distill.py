"""Adversarial step distillation to a 4- or 8-step sampler (SNAPGEN.md section 3, step distillation).

[paper] adversarial training combined with KD from a few-step teacher. Here [choose]:
- the student starts from a trained multi-step model (`--init`) and is trained only at the sampler's own Euler
  grid times t_k = 1 - k / N;
- few-step KD target: the teacher integrates the segment t_k -> t_{k+1} with `teacher_substeps` small Euler
  steps; the student's one-step velocity should land where the teacher's fine trajectory lands,
  v* = (x_T(t_{k+1}) - x_t) / (t_{k+1} - t_k); combined with the task loss by the timestep-aware scaling S;
- diffusion-GAN discriminator: the student's one-step clean estimate x0_hat = x_t - t v and real data are both
  re-noised at a fresh logit-normal t'; the frozen teacher's features on those noised samples feed small
  trainable heads (one per teacher feature); hinge losses; the generator's gradient flows through the frozen
  teacher into the student.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distill import Teacher, _per_sample, _TeacherConditioner, timestep_aware
from .flow import euler_timesteps, interpolate, sample_timesteps, velocity_target
from .distributed import DistContext
from .objectives import Objective
from .text import PromptEmbeddings
from .trainer import velocity

HEAD_WIDTH = 32  # [choose] discriminator head width: small next to the frozen teacher features it reads


@dataclass(frozen=True)
class StepDistillConfig:
    sampler_steps: int = 4
    teacher_substeps: int = 4  # [choose] teacher Euler steps per student step: the teacher runs 4 x N steps
    adv_weight: float = 0.1  # [choose] generator GAN weight next to S(L_task, L_kd)
    disc_lr: float = 2e-4
    adv_start: int = 0  # steps of pure KD before the discriminator joins


class DiscriminatorHeads(nn.Module):
    """One conv head per teacher feature map -> a logit per sample (mean over positions and heads)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Conv2d(c, HEAD_WIDTH, 3, padding=1), nn.SiLU(),
                                                 nn.Conv2d(HEAD_WIDTH, 1, 1)) for c in widths)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([h(f).flatten(1).mean(1) for h, f in zip(self.heads, feats)]).mean(0)  # (B,)


class StepDistillObjective(Objective):
    kind = "step_distill"

    def __init__(self, teacher: Teacher, prompts: PromptEmbeddings, resolution: int, size: int,
                 config: StepDistillConfig = StepDistillConfig(), weighting: str = "timestep"):
        if config.sampler_steps < 1 or config.teacher_substeps < 1:
            raise ValueError("sampler_steps and teacher_substeps must be >= 1")
        self.teacher, self.prompts, self.resolution, self.size = teacher, prompts, resolution, size
        self.config, self.weighting = config, weighting
        self.grid = euler_timesteps(config.sampler_steps)[:-1]
        self._pending = None

    def attach(self, model: nn.Module, device: torch.device, ctx: DistContext) -> None:
        self.device, self.ctx = device, ctx
        self.teacher.to(device)
        self.tcond = _TeacherConditioner(self.prompts, self.resolution, device)
        with torch.no_grad():
            x = torch.zeros(1, model.spec.latent_channels, self.size, self.size, device=device)
            _, feats = self.teacher(x, torch.full((1,), 0.5, device=device),
                                    *self.tcond(torch.zeros(1, dtype=torch.long, device=device)))
        torch.manual_seed(0)  # the heads start the same on every rank
        self.disc = DiscriminatorHeads([f.shape[1] for f in feats]).to(device)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=self.config.disc_lr, betas=(0.5, 0.9),
                                       weight_decay=0.0)

    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return self.grid[torch.randint(len(self.grid), (n,), generator=gen)]

    @torch.no_grad()
    def few_step_target(self, x_t: torch.Tensor, t: torch.Tensor, tokens, pooled, time_ids) -> torch.Tensor:
        """The velocity that carries x_t to where the teacher's fine Euler trajectory is at t - 1/N."""
        dt = 1.0 / self.config.sampler_steps
        sub = dt / self.config.teacher_substeps
        x, tt = x_t, t.clone()
        for _ in range(self.config.teacher_substeps):
            v, _ = self.teacher(x, tt, tokens, pooled, time_ids)
            x = x - sub * v.view_as(x)
            tt = tt - sub
        return (x_t - x) / dt  # = -(x_next - x_t) / dt: our velocity points from data to noise

    def loss(self, model, cond, x0, noise, t, labels, autocast):
        x_t = interpolate(x0, noise, t)
        pred = velocity(model, cond, x_t, t, labels, autocast)
        tcond = self.tcond(labels)
        target = self.few_step_target(x_t, t, *tcond)
        task = _per_sample(pred - velocity_target(x0, noise))
        kd = _per_sample(pred - target)
        loss = timestep_aware(task, kd, t) if self.weighting == "timestep" else task.mean() + kd.mean()
        logs = {"loss_task": task.mean().detach(), "loss_kd_fewstep": kd.mean().detach()}
        x0_hat = x_t - t.view(-1, 1, 1, 1) * pred  # one-step clean estimate
        t_adv = sample_timesteps(len(x0)).to(x0.device)
        eps = torch.randn_like(x0)
        self._pending = (x0, x0_hat.detach(), eps, t_adv, tcond)
        if self.config.adv_weight > 0 and self._step >= self.config.adv_start:
            _, feats = self.teacher(interpolate(x0_hat, eps, t_adv), t_adv, *tcond)  # grads flow to the student
            gen_loss = -self.disc(feats).mean()  # hinge generator loss
            loss = loss + self.config.adv_weight * gen_loss
            logs["loss_gen"] = gen_loss.detach()
        return loss, logs

    _step = 0

    def aux_step(self, step: int) -> dict:
        self._step = step
        if self._pending is None or self.config.adv_weight <= 0 or step - 1 < self.config.adv_start:
            return {}
        x0, x0_hat, eps, t_adv, tcond = self._pending
        self._pending = None
        with torch.no_grad():
            _, real = self.teacher(interpolate(x0, eps, t_adv), t_adv, *tcond)
            _, fake = self.teacher(interpolate(x0_hat, eps, t_adv), t_adv, *tcond)
        d_loss = F.relu(1 - self.disc(real)).mean() + F.relu(1 + self.disc(fake)).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.ctx.average_grads(self.disc.parameters())
        self.opt_d.step()
        return {"loss_disc": float(d_loss.detach())}

    def identity(self) -> dict:
        return {"kind": self.kind, "teacher": self.teacher.identity(), "weighting": self.weighting,
                **asdict(self.config)}

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt_d": self.opt_d.state_dict(), "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt_d.load_state_dict(state["opt_d"])
        self._step = state["step"]
