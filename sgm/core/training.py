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
loss rows after s are dropped on resume.

The loop works on tensors only: the resumable state goes to a :class:`CheckpointStore` and the
loss rows to a :class:`LossLog`, whose file implementations live in ``sgm.io``.

Distributed data parallel (torchrun, WORLD_SIZE > 1): every rank draws the *global*
batch (indices, conditioning noise, sigma, n) from the same seeds and keeps its slice
``[rank * B / W, (rank + 1) * B / W)``; DDP averages the gradients. The update therefore
equals the single-process one up to float summation order. Rank 0 alone writes
checkpoints, loss rows and the progress bar.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from sgm.core.device import pick_device
from sgm.core.ema import EMA
from sgm.core.loss import EDMLoss
from sgm.core.precond import EDMPrecond
from sgm.core.wasserstein import WassersteinEDMLoss

__all__ = ["CheckpointStore", "LossLog", "LossRow", "MemoryCheckpoints", "MemoryLog",
           "SnapshotStore", "TrainResult", "TrainSettings", "train"]

MakePair = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor | None]]


class TrainSettings(Protocol):
    """The hyper-parameters :func:`train` reads (``batch_size`` is the global batch).

    The validated settings of the workflow, ``sgm.config.TrainSettings``, are the one
    implementation (with the defaults and descriptions); a test keeps the two in step.
    """

    steps: int
    batch_size: int
    lr: float
    lr_warmup_steps: int
    grad_clip: float
    ema_beta: float
    ema_warmup: bool
    checkpoint_every: int
    log_every: int
    seed: int
    device: str
    P_mean: float
    P_std: float
    compile: bool
    snapshot_every: int
    wasserstein: Any


SETTINGS_FIELDS = tuple(TrainSettings.__annotations__)
# Settings that may change between a run and its resumption without making it another run.
RESUMABLE_CHANGES = frozenset({"steps", "device", "compile", "checkpoint_every",
                               "snapshot_every"})


def settings_dict(s: TrainSettings) -> dict[str, Any]:
    """The hyper-parameters as plain data (stored in every checkpoint)."""
    out = {name: getattr(s, name) for name in SETTINGS_FIELDS}
    w = out["wasserstein"]
    out["wasserstein"] = None if w is None else {
        k: getattr(w, k) for k in ("weight", "sigma_max", "kind", "projections")}
    return out


class CheckpointStore(Protocol):
    """Where a run's resumable state goes (``sgm.io.checkpoint.CheckpointFolder`` on disk)."""

    def latest(self) -> dict[str, Any] | None:
        """The newest readable state, or None when the run starts afresh."""

    def save(self, state: dict[str, Any], step: int) -> None:
        """Keep ``state`` (tensors and plain data) as the state after ``step`` updates."""


@dataclass(frozen=True)
class LossRow:
    """One line of the loss log: the mean loss over the last ``log_every`` steps."""

    step: int
    loss: float
    sigma_median: float
    lr: float
    wall_s: float


class SnapshotStore(Protocol):
    """Where the EMA weights go every ``snapshot_every`` steps (candidates for model
    selection on validation data; ``sgm.io.checkpoint.SnapshotFolder`` on disk)."""

    def save(self, weights: dict[str, Tensor], step: int) -> None:
        """Keep the EMA weights after ``step`` updates."""


class LossLog(Protocol):
    """Where loss rows go (``sgm.io.losslog.LossCSV`` on disk)."""

    def restart(self, step: int) -> None:
        """Drop the rows after ``step`` (a resumed run rewrites them)."""

    def append(self, row: LossRow) -> None:
        """Add one row."""


class MemoryCheckpoints:
    """A :class:`CheckpointStore` in memory (the latest state only): for runs that continue
    chunk by chunk in one process, and for tests."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def latest(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.state)

    def save(self, state: dict[str, Any], step: int) -> None:
        self.state = copy.deepcopy(state)


class MemoryLog:
    """A :class:`LossLog` in memory (any row type); ``echo(row)`` is called on every row."""

    def __init__(self, echo: Callable[[Any], None] | None = None) -> None:
        self.rows: list[Any] = []
        self.echo = echo

    def restart(self, step: int) -> None:
        self.rows = [r for r in self.rows if r.step <= step]

    def append(self, row: Any) -> None:
        self.rows.append(row)
        if self.echo is not None:
            self.echo(row)


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
    dev = pick_device(device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device(f"cuda:{local_rank}")
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



def rng_state(gens: dict[str, torch.Generator], device: torch.device) -> dict[str, Any]:
    """Every random state a resumed run needs: the named generators, torch's global CPU
    generator and, on CUDA, its per-device generators (a checkpoint's ``rng`` entry)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {**{k: g.get_state() for k, g in gens.items()},
            "torch_cpu": torch.get_rng_state(), "torch_cuda": list(cuda)}


def restore_rng_state(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
    """Put back what :func:`rng_state` captured."""
    for name, g in gens.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def train(
    precond: EDMPrecond,
    data: Tensor,
    make_pair: MakePair | None,
    settings: TrainSettings,
    checkpoints: CheckpointStore,
    losses: LossLog,
    log: logging.Logger | None = None,
    progress: bool = True,
    snapshots: SnapshotStore | None = None,
) -> TrainResult | None:
    """Train ``precond`` (in place) on data: Tensor[N, C, H, W]; resume from the latest state
    in ``checkpoints`` if there is one.

    Args:
        make_pair: ``make_pair(x0[B, C, H, W], generator) -> (target[B, C, H, W],
            cond[B, K, H, W] | None)``: the training pair made from a clean batch (the target
            is x0 itself or a transform of it, e.g. a residual from a baseline); called
            every step on the clean global batch (None when K = 0).
        settings: see :class:`TrainSettings`; ``batch_size`` must divide by WORLD_SIZE.
        checkpoints: keeps the resumable state (written by rank 0 only).
        losses: receives a :class:`LossRow` every ``log_every`` steps (rank 0 only).
        snapshots: receives the EMA weights every ``snapshot_every`` steps (0: never) and at
            the end (rank 0 only).

    Returns:
        The result on rank 0 (and in single-process runs); None on other ranks.
    """
    s = settings
    log = log or logging.getLogger(__name__)
    if s.steps < 0 or s.log_every < 1 or s.batch_size < 1:
        raise ValueError("need steps >= 0, log_every >= 1, batch_size >= 1")
    ddp, device = _setup(s.device)
    try:
        return _train(precond, data, make_pair, s, checkpoints, losses, log, progress, ddp,
                      device, snapshots)
    finally:
        if ddp.owns_group:
            dist.destroy_process_group()


def _train(
    precond: EDMPrecond,
    data: Tensor,
    make_pair: MakePair | None,
    s: TrainSettings,
    checkpoints: CheckpointStore,
    losses: LossLog,
    log: logging.Logger,
    progress: bool,
    ddp: _Dist,
    device: torch.device,
    snapshots: SnapshotStore | None = None,
) -> TrainResult | None:
    if s.batch_size % ddp.world_size:
        raise ValueError(f"batch_size {s.batch_size} not divisible by {ddp.world_size} ranks")
    local = s.batch_size // ddp.world_size
    mine = slice(ddp.rank * local, (ddp.rank + 1) * local)
    main = ddp.rank == 0
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
    w = s.wasserstein
    if w is not None and w.weight > 0:  # WassDiff's distribution regulariser (Liu et al. 2025)
        loss_fn: EDMLoss = WassersteinEDMLoss(
            s.P_mean, s.P_std, precond.sigma_data, weight=w.weight, sigma_max=w.sigma_max,
            kind=w.kind, projections=w.projections, generator=gens["noise"])
    else:
        loss_fn = EDMLoss(s.P_mean, s.P_std, precond.sigma_data)
    acc = _LossLog(device)
    step, wall_before = 0, 0.0

    torch.manual_seed(s.seed)  # dropout and anything else drawing from the global generator
    ckpt = checkpoints.latest()
    if ckpt is not None:
        step = int(ckpt["step"])
        precond.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"], gens)
        acc.load_state_dict(ckpt["log"])
        wall_before = float(ckpt["log"]["wall_s"])
        changed = {k for k, v in settings_dict(s).items() if ckpt["settings"].get(k) != v}
        changed -= RESUMABLE_CHANGES
        if main and changed:
            log.warning("resumed with changed settings %s: not one run", sorted(changed))
        if main:
            log.info("resumed from %s at step %d", checkpoints, step)
    if main:
        losses.restart(step)
    if s.compile:
        precond.net.compile()

    def checkpoint(step: int, wall: float) -> None:
        state = {
            "step": step,
            "model": precond.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": rng_state(gens, device),
            "log": {**acc.state_dict(), "wall_s": wall},
            "settings": settings_dict(s),
        }
        if main:
            checkpoints.save(state, step)
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
                losses.append(LossRow(step, mean, median, lr, wall))
        if main and snapshots is not None and (
                step == s.steps or (s.snapshot_every > 0 and step % s.snapshot_every == 0)):
            # Before the checkpoint: a run resumed from it has every snapshot up to its step.
            snapshots.save(ema.module.state_dict(), step)
        if step == s.steps or (s.checkpoint_every > 0 and step % s.checkpoint_every == 0):
            checkpoint(step, wall)
    bar.close()

    final = acc.flush(ddp)[0] if acc.count else acc.last_loss
    precond.eval()
    if not main:
        return None
    return TrainResult(ema=ema.module, raw=precond, step=step, final_loss=final)
