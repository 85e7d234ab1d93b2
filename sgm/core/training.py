"""Resumable (optionally distributed) training loop for an EDM-preconditioned denoiser.

One step, following EDM ``training_loop.py`` (Karras et al. 2022, Sec. 5):

    i_1..i_B ~ U{0..N-1}                         batch indices     (generator "index")
    t, y     = make_pair(x_0[i], g_cond)         target and conditioning, fresh observation noise
    sigma, n ~ EDMLoss.draw                      ln sigma ~ N(P_mean, P_std^2), n ~ N(0, I)
    L        = mean_b lambda(sigma_b) ||D(t + sigma_b n_b; sigma_b, y_b) - t||^2
    theta    <- Adam(theta, clip(grad L)),       lr = lr_max min(1, (k + 1) / warmup)
    theta_ema <- EMA update (warm-up decay)

Exact resumption: the checkpoint holds the model, EMA, optimiser, step, the loss-log
accumulator and *all* random states (the three generators and torch's global CPU/CUDA
states), so a run resumed from step s continues bit-for-bit like an uninterrupted one;
``loss.csv`` rows after s are dropped on resume.

Distributed data parallel (torchrun, WORLD_SIZE > 1): every rank draws the *global*
batch (indices, conditioning noise, sigma, n) from the same seeds and keeps its slice
``[rank * B / W, (rank + 1) * B / W)``; DDP averages the gradients. The update therefore
equals the single-process one up to float summation order. Rank 0 alone writes
checkpoints, ``loss.csv`` and the progress bar.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from sgm.core.ema import EMA
from sgm.core.loss import EDMLoss
from sgm.core.precond import EDMPrecond
from sgm.io.atomic import atomic_write_text
from sgm.io.checkpoint import load_latest_checkpoint, save_checkpoint

__all__ = ["LOSS_HEADER", "TrainResult", "TrainSettings", "train"]

LOSS_HEADER = "step,loss,sigma_median,lr,wall_s"
MakePair = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor | None]]


@dataclass
class TrainSettings:
    """Hyper-parameters of :func:`train` (``batch_size`` is the global batch)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-4
    lr_warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_beta: float = 0.999
    ema_warmup: bool = True
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    P_mean: float = -1.2
    P_std: float = 1.2
    compile: bool = False
    keep_checkpoints: int = 2


@dataclass
class TrainResult:
    """Trained denoisers (EMA and raw weights, eval mode), final step, final mean loss."""

    ema: EDMPrecond
    raw: EDMPrecond
    step: int
    final_loss: float


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def _setup(device: str) -> tuple[_Dist, torch.device]:
    """Initialise torch.distributed from torchrun's env when WORLD_SIZE > 1; pick device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    if world <= 1:
        return _Dist(), dev
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), owns), dev


def _lr_at(k: int, s: TrainSettings) -> float:
    """Learning rate of update k (0-based): linear warm-up, then constant."""
    return s.lr * min(1.0, (k + 1) / max(1, s.lr_warmup_steps))


def _rewrite_loss_csv(path: Path, keep_until: int) -> None:
    """Keep the header and the complete rows with step <= keep_until (atomic rewrite)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines(keepends=True)[1:]:
            fields = line.rstrip("\n").split(",")
            if line.endswith("\n") and len(fields) == 5 and fields[0].isdigit():
                if int(fields[0]) <= keep_until:
                    rows.append(line)
    atomic_write_text(path, LOSS_HEADER + "\n" + "".join(rows))


class _LossLog:
    """Running sums over the current log interval (checkpointed for exact resumption)."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        self.sigmas: list[Tensor] = []
        self.last_loss = math.nan

    def add(self, loss: Tensor, sigma: Tensor) -> None:
        """loss: Tensor[b] (this rank's slice), sigma: Tensor[B] (global batch)."""
        self.loss_sum += loss.detach().sum().to(torch.float64)
        self.count += loss.numel()
        self.sigmas.append(sigma.detach())

    def flush(self, ddp: _Dist) -> tuple[float, float]:
        """(mean loss over all ranks, median sigma) of the interval; resets the sums."""
        total = torch.stack([self.loss_sum, self.loss_sum.new_tensor(float(self.count))])
        if ddp.world_size > 1:
            dist.all_reduce(total)
        mean = float(total[0] / total[1])
        median = float(torch.cat(self.sigmas).median())
        self.loss_sum.zero_()
        self.count = 0
        self.sigmas = []
        self.last_loss = mean
        return mean, median

    def state_dict(self) -> dict[str, Any]:
        sig = torch.cat(self.sigmas).cpu() if self.sigmas else torch.zeros(0)
        return {
            "loss_sum": self.loss_sum.cpu(),
            "count": self.count,
            "sigmas": sig,
            "last_loss": self.last_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum.copy_(state["loss_sum"])
        self.count = int(state["count"])
        sig = state["sigmas"].to(self.loss_sum.device)
        self.sigmas = [sig] if sig.numel() else []
        self.last_loss = float(state["last_loss"])


def train(
    precond: EDMPrecond,
    data: Tensor,
    make_pair: MakePair | None,
    settings: TrainSettings,
    workdir: Path,
    log: logging.Logger | None = None,
    progress: bool = True,
) -> TrainResult | None:
    """Train ``precond`` (in place) on data: Tensor[N, C, H, W]; resume from
    ``workdir/checkpoints`` if a checkpoint exists.

    Args:
        make_pair: ``make_pair(x0[B, C, H, W], generator) -> (target[B, C, H, W],
            cond[B, K, H, W] | None)``: the training pair made from a clean batch (the target
            is x0 itself or a transform of it, e.g. a residual from a baseline); called
            every step on the clean global batch (None when K = 0).
        settings: see :class:`TrainSettings`; ``batch_size`` must divide by WORLD_SIZE.
        workdir: receives ``loss.csv`` and ``checkpoints/``.

    Returns:
        The result on rank 0 (and in single-process runs); None on other ranks.
    """
    s = settings
    log = log or logging.getLogger(__name__)
    if s.steps < 0 or s.log_every < 1 or s.batch_size < 1:
        raise ValueError("need steps >= 0, log_every >= 1, batch_size >= 1")
    ddp, device = _setup(s.device)
    try:
        return _train(precond, data, make_pair, s, Path(workdir), log, progress, ddp, device)
    finally:
        if ddp.owns_group:
            dist.destroy_process_group()


def _train(
    precond: EDMPrecond,
    data: Tensor,
    make_pair: MakePair | None,
    s: TrainSettings,
    workdir: Path,
    log: logging.Logger,
    progress: bool,
    ddp: _Dist,
    device: torch.device,
) -> TrainResult | None:
    if s.batch_size % ddp.world_size:
        raise ValueError(f"batch_size {s.batch_size} not divisible by {ddp.world_size} ranks")
    local = s.batch_size // ddp.world_size
    mine = slice(ddp.rank * local, (ddp.rank + 1) * local)
    main = ddp.rank == 0
    ckpt_dir, csv_path = workdir / "checkpoints", workdir / "loss.csv"
    data = data.to(device=device, dtype=torch.float32)

    precond.to(device).train()
    model: nn.Module = precond
    if ddp.world_size > 1:  # broadcasts rank 0's weights, then averages gradients
        model = nn.parallel.DistributedDataParallel(
            precond, device_ids=[device.index] if device.type == "cuda" else None
        )
    ema = EMA(precond, beta=s.ema_beta, warmup=s.ema_warmup)
    params = list(precond.parameters())
    opt = torch.optim.Adam(params, lr=s.lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    gens = {
        name: torch.Generator(device=dev)
        for name, dev in (("index", "cpu"), ("cond", device), ("noise", device))
    }
    for i, g in enumerate(gens.values()):
        g.manual_seed(s.seed + 1_000_003 * i)
    loss_fn = EDMLoss(s.P_mean, s.P_std, precond.sigma_data)
    acc = _LossLog(device)
    step, wall_before = 0, 0.0

    ckpt = load_latest_checkpoint(ckpt_dir)
    if ckpt is not None:
        step = int(ckpt["step"])
        precond.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        for name, g in gens.items():
            g.set_state(ckpt["rng"][name])
        torch.set_rng_state(ckpt["rng"]["torch_cpu"])
        if ckpt["rng"]["torch_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["torch_cuda"])
        acc.load_state_dict(ckpt["log"])
        wall_before = float(ckpt["log"]["wall_s"])
        changed = {k for k, v in asdict(s).items() if ckpt["settings"].get(k) != v}
        changed -= {"steps", "device", "compile", "checkpoint_every", "keep_checkpoints"}
        if main and changed:
            log.warning("resumed with changed settings %s: not one run", sorted(changed))
        if main:
            log.info("resumed from %s at step %d", ckpt_dir, step)
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        _rewrite_loss_csv(csv_path, keep_until=step)
    if s.compile:
        precond.net.compile()

    def checkpoint(step: int, wall: float) -> None:
        cuda_states = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
        state = {
            "step": step,
            "model": precond.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": {
                **{k: g.get_state() for k, g in gens.items()},
                "torch_cpu": torch.get_rng_state(),
                "torch_cuda": list(cuda_states),
            },
            "log": {**acc.state_dict(), "wall_s": wall},
            "settings": asdict(s),
        }
        if main:
            save_checkpoint(state, ckpt_dir, step, keep=s.keep_checkpoints)
        ddp.barrier()

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    t0 = time.perf_counter()
    bar = tqdm(
        total=s.steps,
        initial=min(step, s.steps),
        disable=not (progress and main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    while step < s.steps:
        idx = torch.randint(data.shape[0], (s.batch_size,), generator=gens["index"])
        x0 = data[idx.to(device)]
        x0, cond = make_pair(x0, gens["cond"]) if make_pair is not None else (x0, None)
        sigma, noise = loss_fn.draw(x0, gens["noise"])
        lr = _lr_at(step, s)
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast:
            loss = loss_fn.loss_at(
                model, x0[mine], None if cond is None else cond[mine], sigma[mine], noise[mine]
            )
        loss.mean().backward()
        for p in params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        if s.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(precond)
        acc.add(loss, sigma)
        step += 1
        bar.update(1)
        wall = wall_before + time.perf_counter() - t0
        if step % s.log_every == 0:
            mean, median = acc.flush(ddp)
            bar.set_postfix(loss=f"{mean:.4f}")
            if main:
                log.info("step %d loss %.4f sigma_median %.3g lr %.2e", step, mean, median, lr)
                with csv_path.open("a") as f:
                    f.write(f"{step},{mean:.9g},{median:.9g},{lr:.9g},{wall:.3f}\n")
        if step == s.steps or (s.checkpoint_every > 0 and step % s.checkpoint_every == 0):
            checkpoint(step, wall)
    bar.close()

    final = acc.flush(ddp)[0] if acc.count else acc.last_loss
    precond.eval()
    if not main:
        return None
    return TrainResult(ema=ema.module, raw=precond, step=step, final_loss=final)
