"""Resumable, seeded Score-of-Mixture Distillation of a conditional teacher into a one-step
generator (the pieces and equations are in ``sgm.core.distill``).

One step k, following the reference code's ``train_one_step`` (Jayashankar et al. 2025,
arXiv 2502.09609, ``main/sjsd_dist``), with the patterns of ``sgm.core.training``:

    i_1..i_B ~ U{0..N-1}                      batch indices              (generator "index")
    x, y     = make_pair(data[i], g_cond)     real targets, conditioning (generator "cond")
    z ~ N(0, I);  x̃ = G_θ(z, y)               fake samples               (generator "noise")
    if k % generator_every == 0:              generator update, α ~ U{α_min..1}, σ on the ramp
        θ <- AdamW(θ, clip ∇θ ½‖x̃ − sg(x̃ − g)‖²),   g = generator_direction(ψ, D_T, x̃, ...)
        θ_ema <- EMA update
    α ~ 0 w.p. 1/4 else U{0..1}, σ on the ramp:  ψ <- AdamW(ψ, clip ∇ψ L_ψ(x̃, x))

Both updates use the fake samples of the generator before its update (as the reference code).
Exact resumption: a checkpoint holds both networks, the EMA, both optimisers, the step, the
log accumulators and every random state (the three generators and torch's global ones), so a
resumed run continues bit for bit; log rows after the checkpoint are dropped on resume.
Single process (no DDP): the one-step generator of a small model distils in minutes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sgm.core.device import pick_device
from sgm.core.distill import (
    draw_alpha_generator,
    draw_alpha_score,
    draw_sigma,
    generate,
    generator_direction,
    generator_loss,
    mixture_score_loss,
)
from sgm.core.ema import EMA
from sgm.core.training import CheckpointStore, MakePair, restore_rng_state, rng_state

__all__ = ["DistillLog", "DistillResult", "DistillRow", "DistillSettings", "distill"]


class DistillSettings(Protocol):
    """The hyper-parameters :func:`distill` reads (the validated settings are the workflow's
    ``DistillSettings``; defaults and descriptions there)."""

    steps: int
    batch_size: int
    lr_generator: float
    lr_score: float
    lr_warmup_steps: int
    weight_decay: float
    grad_clip: float
    ema_beta: float
    ema_warmup: bool
    generator_every: int
    sigma_g: float
    alpha_min: float
    alpha_zero_prob: float
    alpha_levels: int
    sigma_min: float
    sigma_max: float
    rho: float
    generator_sigma_trim: float
    checkpoint_every: int
    log_every: int
    seed: int
    device: str


SETTINGS_FIELDS = tuple(DistillSettings.__annotations__)
RESUMABLE_CHANGES = frozenset({"steps", "device", "checkpoint_every"})


def settings_dict(s: DistillSettings) -> dict[str, Any]:
    """The hyper-parameters as plain data (stored in every checkpoint)."""
    return {name: getattr(s, name) for name in SETTINGS_FIELDS}


@dataclass(frozen=True)
class DistillRow:
    """One line of the distillation log, means over the last ``log_every`` steps: the mixture
    score loss L_ψ, the generator's surrogate loss ½ mean g² (the squared step it is pushed
    along), the generator's learning rate and the wall time so far."""

    step: int
    score_loss: float
    generator_loss: float
    lr: float
    wall_s: float


class DistillLog(Protocol):
    """Where distillation rows go (a CSV file in ``sgm.stages.distill``)."""

    def restart(self, step: int) -> None:
        """Drop the rows after ``step``."""

    def append(self, row: DistillRow) -> None:
        """Add one row."""


@dataclass
class DistillResult:
    """The one-step generator's denoiser (EMA and raw weights, eval mode), the mixture denoiser,
    the final step and the last logged losses."""

    ema: nn.Module
    raw: nn.Module
    mixture: nn.Module
    step: int
    score_loss: float
    generator_loss: float


def _lr_at(k: int, lr: float, warmup: int) -> float:
    return lr * min(1.0, (k + 1) / max(1, warmup))


def _clip_step(params: list[Tensor], opt: torch.optim.Optimizer, clip: float) -> None:
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
    if clip > 0:
        nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def distill(
    teacher: nn.Module,
    generator: nn.Module,
    mixture: nn.Module,
    data: Tensor,
    make_pair: MakePair | None,
    settings: DistillSettings,
    checkpoints: CheckpointStore,
    losses: DistillLog,
    log: logging.Logger | None = None,
    progress: bool = True,
) -> DistillResult:
    """Distil ``teacher`` into the one-step ``generator`` (trained in place, as is ``mixture``);
    resume from the latest state in ``checkpoints`` if there is one.

    Args:
        teacher: D_T(x, σ, cond), frozen.
        generator: the generator's denoiser D_θ (a copy of the teacher), used at σ_g.
        mixture: ψ(x, σ, [cond, α]) (``sgm.core.distill.with_alpha_channel`` of the teacher).
        data: Tensor[N, ...], the training batches ``make_pair`` turns into (real target
            Tensor[B, C, H, W], cond Tensor[B, K, H, W] | None), as for ``training.train``.
        settings: see :class:`DistillSettings`.
        checkpoints, losses: the resumable state and the log rows.
    """
    s = settings
    log = log or logging.getLogger(__name__)
    if s.steps < 0 or s.log_every < 1 or s.batch_size < 1 or s.generator_every < 1:
        raise ValueError("need steps >= 0, log_every >= 1, batch_size >= 1, generator_every >= 1")
    device = pick_device(s.device)
    data = data.to(device=device, dtype=torch.float32)
    teacher.to(device).eval().requires_grad_(False)
    generator.to(device).train()
    mixture.to(device).train()
    sigma_data = float(getattr(teacher, "sigma_data", 1.0))
    ema = EMA(generator, beta=s.ema_beta, warmup=s.ema_warmup)
    g_params = [p for p in generator.parameters() if p.requires_grad]
    m_params = [p for p in mixture.parameters() if p.requires_grad]
    opt_g = torch.optim.AdamW(g_params, lr=s.lr_generator, weight_decay=s.weight_decay)
    opt_m = torch.optim.AdamW(m_params, lr=s.lr_score, weight_decay=s.weight_decay)
    gens = {name: torch.Generator(device=dev)
            for name, dev in (("index", "cpu"), ("cond", device), ("noise", device))}
    for i, g in enumerate(gens.values()):
        g.manual_seed(s.seed + 1_000_003 * i)
    sums = {"score": 0.0, "gen": 0.0, "n_score": 0, "n_gen": 0}
    last = {"score": math.nan, "gen": math.nan}
    step, wall_before = 0, 0.0

    torch.manual_seed(s.seed)
    ckpt = checkpoints.latest()
    if ckpt is not None:
        step = int(ckpt["step"])
        generator.load_state_dict(ckpt["generator"])
        mixture.load_state_dict(ckpt["mixture"])
        ema.load_state_dict(ckpt["ema"])
        opt_g.load_state_dict(ckpt["opt_generator"])
        opt_m.load_state_dict(ckpt["opt_mixture"])
        restore_rng_state(ckpt["rng"], gens)
        sums.update(ckpt["log"]["sums"])
        last.update(ckpt["log"]["last"])
        wall_before = float(ckpt["log"]["wall_s"])
        changed = {k for k, v in settings_dict(s).items() if ckpt["settings"].get(k) != v}
        if changed - RESUMABLE_CHANGES:
            log.warning("resumed with changed settings %s: not one run",
                        sorted(changed - RESUMABLE_CHANGES))
        log.info("resumed from %s at step %d", checkpoints, step)
    losses.restart(step)

    def checkpoint(step: int, wall: float) -> None:
        checkpoints.save({
            "step": step,
            "generator": generator.state_dict(),
            "mixture": mixture.state_dict(),
            "ema": ema.state_dict(),
            "opt_generator": opt_g.state_dict(),
            "opt_mixture": opt_m.state_dict(),
            "rng": rng_state(gens, device),
            "log": {"sums": dict(sums), "last": dict(last), "wall_s": wall},
            "settings": settings_dict(s),
        }, step)

    noise = gens["noise"]
    t0 = time.perf_counter()
    bar = tqdm(total=s.steps, initial=min(step, s.steps), disable=not progress, desc="distill",
               unit="step", dynamic_ncols=True)
    while step < s.steps:
        idx = torch.randint(data.shape[0], (s.batch_size,), generator=gens["index"])
        batch = data[idx.to(device)]
        real, cond = make_pair(batch, gens["cond"]) if make_pair is not None else (batch, None)
        b = real.shape[0]
        z = torch.randn(real.shape, generator=noise, device=device)
        lr_g = _lr_at(step, s.lr_generator, s.lr_warmup_steps)
        lr_m = _lr_at(step, s.lr_score, s.lr_warmup_steps)
        for group in opt_g.param_groups:
            group["lr"] = lr_g
        for group in opt_m.param_groups:
            group["lr"] = lr_m

        if step % s.generator_every == 0:  # generator update, with the current ψ
            fake = generate(generator, z, cond, s.sigma_g)
            sigma = draw_sigma(b, noise, s.sigma_min, s.sigma_max, s.rho,
                               s.generator_sigma_trim, 1.0 - s.generator_sigma_trim)
            alpha = draw_alpha_generator(b, noise, s.alpha_min, s.alpha_levels)
            n = torch.randn(real.shape, generator=noise, device=device)
            direction = generator_direction(mixture, teacher, fake, real, cond, sigma, alpha, n)
            loss_g = generator_loss(fake, direction)
            loss_g.mean().backward()
            _clip_step(g_params, opt_g, s.grad_clip)
            ema.update(generator)
            sums["gen"] += float(loss_g.detach().sum())
            sums["n_gen"] += b
            fake = fake.detach()
        else:
            with torch.no_grad():
                fake = generate(generator, z, cond, s.sigma_g)

        sigma = draw_sigma(b, noise, s.sigma_min, s.sigma_max, s.rho)
        alpha = draw_alpha_score(b, noise, s.alpha_zero_prob, s.alpha_levels)
        n_fake = torch.randn(real.shape, generator=noise, device=device)
        n_real = torch.randn(real.shape, generator=noise, device=device)
        loss_m = mixture_score_loss(mixture, teacher, fake, real, cond, sigma, alpha, n_fake,
                                    n_real, sigma_data)
        loss_m.mean().backward()
        _clip_step(m_params, opt_m, s.grad_clip)
        sums["score"] += float(loss_m.detach().sum())
        sums["n_score"] += b

        step += 1
        bar.update(1)
        wall = wall_before + time.perf_counter() - t0
        if step % s.log_every == 0:
            last["score"] = sums["score"] / max(1, sums["n_score"])
            last["gen"] = sums["gen"] / sums["n_gen"] if sums["n_gen"] else math.nan
            sums.update(score=0.0, gen=0.0, n_score=0, n_gen=0)
            bar.set_postfix(score=f"{last['score']:.4f}", gen=f"{last['gen']:.3g}")
            log.info("step %d score loss %.4f generator loss %.4g lr %.2e", step, last["score"],
                     last["gen"], lr_g)
            losses.append(DistillRow(step, last["score"], last["gen"], lr_g, wall))
        if step == s.steps or (s.checkpoint_every > 0 and step % s.checkpoint_every == 0):
            checkpoint(step, wall)
    bar.close()

    if sums["n_score"]:
        last["score"] = sums["score"] / sums["n_score"]
    if sums["n_gen"]:
        last["gen"] = sums["gen"] / sums["n_gen"]
    generator.eval()
    mixture.eval()
    return DistillResult(ema=ema.module, raw=generator, mixture=mixture, step=step,
                         score_loss=last["score"], generator_loss=last["gen"])
