"""Tests of sgm.core.training: learning, exact resumption, resumption after SIGKILL."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from sgm.config import TrainSettings
from sgm.core.loss import EDMLoss
from sgm.core.network import build_unet
from sgm.core.precond import EDMPrecond
from sgm.core.training import train
from sgm.io.checkpoint import list_checkpoints
from sgm.io.losslog import LOSS_HEADER, run_files


def toy_fields(n: int, hw: int, seed: int) -> Tensor:
    """Smooth random fields a sin(2 pi (x + phase)) + b cos(2 pi y), unit variance:
    Tensor[n, 1, hw, hw]."""
    g = torch.Generator().manual_seed(seed)
    a, phase, b = torch.randn(3, n, 1, 1, 1, generator=g)
    y, x = torch.meshgrid(torch.linspace(0, 1, hw), torch.linspace(0, 1, hw), indexing="ij")
    fields = a * torch.sin(2 * torch.pi * (x + phase)) + b * torch.cos(2 * torch.pi * y)
    return fields / fields.std()


def coarse_obs(x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Training pair (x0, y): y = 4x4 block means, upsampled back, plus fresh N(0, 0.1^2) noise."""
    y = F.interpolate(F.avg_pool2d(x0, 4), scale_factor=4.0, mode="nearest")
    return x0, y + 0.1 * torch.randn(y.shape, generator=generator, device=y.device)


def read_loss_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        assert f.readline().strip() == LOSS_HEADER
        f.seek(0)
        return list(csv.DictReader(f))


def without_wall(rows: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    return [(r["step"], r["loss"], r["sigma_median"], r["lr"]) for r in rows]


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = toy_fields(128, 12, seed=1)
    precond = EDMPrecond(build_unet("tiny", 2, 1))
    settings = TrainSettings(
        steps=160, batch_size=8, lr=2e-3, lr_warmup_steps=40, log_every=40,
        checkpoint_every=80, seed=3,
    )  # fmt: skip
    result = train(precond, data, coarse_obs, settings, *run_files(tmp_path), progress=False)

    rows = read_loss_csv(tmp_path / "loss.csv")
    assert [int(r["step"]) for r in rows] == [40, 80, 120, 160]
    losses = [float(r["loss"]) for r in rows]
    # an untrained (zero-output) net has expected loss Var(x0) / sigma_d^2 = 1
    assert 0.6 < losses[0] < 1.2
    assert losses[-1] < 0.5 * losses[0]
    assert result.final_loss == pytest.approx(losses[-1], rel=1e-6)
    assert result.step == 160
    # lr column: linear warm-up over 40 steps, then constant
    assert [float(r["lr"]) for r in rows] == pytest.approx([2e-3] * 4)
    # median of 320 draws of ln sigma ~ N(-1.2, 1.2^2): exp(-1.2) = 0.30, s.e. ~9 %
    for r in rows:
        assert 0.2 < float(r["sigma_median"]) < 0.45
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [80, 160]

    # held-out denoising at fixed noise levels: the EMA net beats the untrained one (loss 1)
    test = toy_fields(64, 12, seed=99)
    _, cond = coarse_obs(test, torch.Generator().manual_seed(0))
    loss_fn = EDMLoss()
    assert not result.ema.training
    with torch.no_grad():
        for sigma in (0.1, 0.5, 2.0):
            s = torch.full((64,), sigma)
            noise = torch.randn(test.shape, generator=torch.Generator().manual_seed(1))
            trained = loss_fn.loss_at(result.ema, test, cond, s, noise).mean().item()
            fresh = loss_fn.loss_at(EDMPrecond(build_unet("tiny", 2, 1)), test, cond, s, noise)
            assert fresh.mean().item() == pytest.approx(1.0, abs=0.15)
            assert trained < 0.6 * fresh.mean().item(), sigma


def _resume_setup(seed: int) -> tuple[EDMPrecond, Tensor, TrainSettings]:
    torch.manual_seed(seed)  # a different initialisation each time: resume must overwrite it
    precond = EDMPrecond(build_unet("tiny", 2, 1, base_channels=8, dropout=0.1))
    settings = TrainSettings(
        steps=40, batch_size=4, lr=1e-3, lr_warmup_steps=30, log_every=3,
        checkpoint_every=10, ema_beta=0.9, seed=5,
    )  # fmt: skip
    return precond, toy_fields(32, 8, seed=2), settings


def test_resume_is_identical_to_uninterrupted(tmp_path: Path) -> None:
    precond, data, settings = _resume_setup(seed=0)
    full = train(precond, data, coarse_obs, settings, *run_files(tmp_path / "full"), progress=False)

    precond, data, settings = _resume_setup(seed=0)
    settings.steps = 20  # stops in the middle of a log interval (log_every = 3)
    part = train(precond, data, coarse_obs, settings,
                 *run_files(tmp_path / "split"), progress=False)
    assert part.step == 20
    # simulate a kill after a log row was written but before the next checkpoint
    with (tmp_path / "split" / "loss.csv").open("a") as f:
        f.write("21,9.9,9.9,9.9,9.9\n22,0.1")
    precond, data, settings = _resume_setup(seed=1)
    resumed = train(precond, data, coarse_obs, settings,
                    *run_files(tmp_path / "split"), progress=False)

    assert resumed.step == 40
    for ours, theirs in ((full.ema, resumed.ema), (full.raw, resumed.raw)):
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    assert resumed.final_loss == full.final_loss
    rows_full = read_loss_csv(tmp_path / "full" / "loss.csv")
    rows_split = read_loss_csv(tmp_path / "split" / "loss.csv")
    assert without_wall(rows_split) == without_wall(rows_full)
    assert [int(r["step"]) for r in rows_full] == list(range(3, 40, 3))
    # the warm-up learning rate is logged: lr(k) = 1e-3 (k + 1) / 30 at update k = step - 1
    assert float(rows_full[0]["lr"]) == pytest.approx(1e-3 * 3 / 30)

    # a run that is already complete returns its state without training further
    precond, data, settings = _resume_setup(seed=2)
    again = train(precond, data, coarse_obs, settings,
                  *run_files(tmp_path / "split"), progress=False)
    assert again.step == 40 and again.final_loss == full.final_loss
    assert torch.equal(again.ema.net.conv_out.weight, full.ema.net.conv_out.weight)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from sgm.core.network import build_unet
    from sgm.core.precond import EDMPrecond
    from sgm.config import TrainSettings
    from sgm.core.training import train
    from sgm.io.losslog import run_files

    def run(workdir, pace):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(4)
        data = torch.randn(16, 1, 8, 8, generator=g)
        precond = EDMPrecond(build_unet("tiny", 1, 1, base_channels=8))  # unconditional
        settings = TrainSettings(steps=30, batch_size=4, lr=1e-3, log_every=3,
                                 checkpoint_every=5, seed=1)
        if pace:  # slow the first run down so that it is killed mid-way on any machine
            make_pair = lambda x, g: (time.sleep(pace), (x, None))[1]
        else:
            make_pair = None
        return train(precond, data, make_pair, settings, *run_files(Path(workdir)), progress=False)

    if __name__ == "__main__":
        result = run(sys.argv[1], float(sys.argv[2]))
        print("final", result.step)
    """
)


def test_sigkill_and_rerun_completes(tmp_path: Path) -> None:
    script = tmp_path / "kill_train.py"
    script.write_text(KILL_SCRIPT)
    workdir = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    cmd = [sys.executable, str(script), str(workdir)]
    proc = subprocess.Popen([*cmd, "0.05"], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(workdir / "checkpoints"):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = list_checkpoints(workdir / "checkpoints")[-1][0]
    assert killed_at < 30  # it really was killed mid-way

    out = subprocess.run([*cmd, "0"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "final 30" in out.stdout
    steps = [int(r["step"]) for r in read_loss_csv(workdir / "loss.csv")]
    assert steps == list(range(3, 31, 3))  # strictly increasing, no gap, no duplicate
    assert list_checkpoints(workdir / "checkpoints")[-1][0] == 30

    # and the result equals an uninterrupted run in this process
    namespace: dict = {"__name__": "kill_script"}
    exec(compile(KILL_SCRIPT, str(script), "exec"), namespace)
    namespace["run"](tmp_path / "reference", 0.0)
    assert without_wall(read_loss_csv(workdir / "loss.csv")) == without_wall(
        read_loss_csv(tmp_path / "reference" / "loss.csv")
    )
