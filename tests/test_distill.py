"""One-step posterior sampling by Score-of-Mixture Distillation: the loss pieces, exact resume,
batch-independent members, the ``distill`` stage, and an end-to-end run on the Gaussian oracle
with the EXACT conditional denoiser as teacher (sgm.core.distill, distillation, onestep,
distill_oracle; sgm.stages.distill)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from test_stages import MODEL, SPEC  # the same tiny pipeline
from torch import Tensor, nn

from sgm.core import metrics
from sgm.core.conditioning import conditioning
from sgm.core.distill import (
    draw_alpha_generator,
    draw_alpha_score,
    draw_sigma,
    generate,
    generator_direction,
    generator_loss,
    mixture_score_loss,
    score_weight,
    with_alpha_channel,
)
from sgm.core.distill_oracle import coarsen_oracle, students
from sgm.core.distillation import DistillRow, DistillSettings, distill
from sgm.core.gaussian import conditional_denoiser
from sgm.core.onestep import OneStep, OneStepModel
from sgm.core.precond import new_denoiser
from sgm.core.sampler import member_seed
from sgm.core.training import MemoryCheckpoints, MemoryLog
from sgm.io import layout
from sgm.io.checkpoint import CorruptFileError
from sgm.io.lock import FolderLock, LockedError
from sgm.io.modelfile import read_model, read_onestep, write_model
from sgm.io.stores import open_store
from sgm.stages import distill as stage
from sgm.stages.ingest import ingest
from sgm.stages.observe import observe
from sgm.stages.sample import sample_stage
from sgm.stages.train import train_stage


def settings(**overrides: Any) -> stage.DistillSettings:
    return stage.DistillSettings(**{"device": "cpu", "log_every": 10, **overrides})



@pytest.fixture(scope="module")
def oracle() -> Any:
    return coarsen_oracle(grid=8, factor=4, noise_std=0.05, n_fields=1000)


# ------------------------------------------------------------------ the teacher and the students


def test_exact_teacher_is_the_gaussian_conditional_denoiser(oracle: Any) -> None:
    truth, cond, mean = oracle.test_set(1, seed=3)
    reference = conditional_denoiser(mean[0].double(), oracle.teacher.cov)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 0.3, 1.0, 5.0, 80.0])
    ours = oracle.teacher(x, sigma, cond.expand(5, -1, -1, -1))
    assert torch.allclose(ours, reference(x.double(), sigma).float(), atol=1e-6)
    # a wrong posterior mean (another observation) is told apart
    other = oracle.teacher(x, sigma, oracle.test_set(1, seed=4)[1].expand(5, -1, -1, -1))
    assert not torch.allclose(other, ours, atol=1e-3)


def test_students_start_as_their_teacher(oracle: Any) -> None:
    _, cond, _ = oracle.test_set(4, seed=0)
    gen, mix = students(oracle, 8)
    x, sigma = torch.randn(4, 1, 8, 8), torch.tensor([0.05, 0.5, 2.5, 20.0])
    assert torch.equal(gen(x, sigma, cond), oracle.teacher(x, sigma, cond))
    for a in (0.0, 0.7):
        plane = torch.full_like(cond, a)
        assert torch.equal(mix(x, sigma, torch.cat([cond, plane], 1)), oracle.teacher(x, sigma,
                                                                                      cond))
    # a U-Net teacher: the α channel's weights start at zero and then learn
    teacher = new_denoiser("tiny", 2, 1, base_channels=8, seed=1)
    with torch.no_grad():
        teacher.net.conv_out.weight.normal_()  # a "trained" teacher: non-zero output
    psi = with_alpha_channel(teacher)
    assert psi.cond_channels == 2 and psi.net.in_channels == 3
    for a in (0.0, 1.0):
        out = psi(x, sigma, torch.cat([cond, torch.full_like(cond, a)], 1))
        assert torch.allclose(out, teacher(x, sigma, cond), atol=1e-5)
    psi(x, sigma, torch.cat([cond, torch.full_like(cond, 0.5)], 1)).square().mean().backward()
    assert psi.net.conv_in.weight.grad[:, -1].abs().sum() > 0


# ------------------------------------------------------------------ the loss pieces


class Const(nn.Module):
    """A denoiser that returns f(x) for α = 1 and h(x) for α = 0 (cond holds α last)."""

    def __init__(self, at_one: Any, at_zero: Any) -> None:
        super().__init__()
        self.at_one, self.at_zero = at_one, at_zero

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        a = cond[:, -1:, :1, :1]
        return a * self.at_one(x, sigma) + (1 - a) * self.at_zero(x, sigma)


def test_mixture_score_loss_reduces_to_the_data_and_the_fake_score() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake, n1, n2 = torch.randn(4, 6, 1, 4, 4, generator=g)
    sigma = torch.rand(6, generator=g) + 0.1
    teacher = lambda x, s, c: 0.5 * x  # noqa: E731
    psi = Const(lambda x, s: 0.8 * x, lambda x, s: 0.3 * x)
    lam = score_weight(sigma, 1.0)
    one, zero = torch.ones(6), torch.zeros(6)

    loss1 = mixture_score_loss(psi, teacher, fake, real, None, sigma, one, n1, n2, 1.0)
    x_real = real + sigma[:, None, None, None] * n2
    expect1 = lam * (0.8 * x_real - 0.5 * x_real).square().mean(dim=(1, 2, 3))
    assert torch.allclose(loss1, expect1)  # alpha = 1: the teacher's (data) denoiser only
    loss1b = mixture_score_loss(psi, teacher, fake + 3.0, real, None, sigma, one, n1, n2, 1.0)
    assert torch.equal(loss1, loss1b)

    loss0 = mixture_score_loss(psi, teacher, fake, real, None, sigma, zero, n1, n2, 1.0)
    x_fake = fake + sigma[:, None, None, None] * n1
    expect0 = lam * (0.3 * x_fake - fake).square().mean(dim=(1, 2, 3))
    assert torch.allclose(loss0, expect0)  # alpha = 0: denoising score matching on the fakes
    loss0b = mixture_score_loss(psi, teacher, fake, real - 3.0, None, sigma, zero, n1, n2, 1.0)
    assert torch.equal(loss0, loss0b)


def test_the_mixture_denoiser_minimises_the_mixture_score_loss() -> None:
    """1-pixel p = N(0, 1), q = N(0, 0.3²): the exact mixture denoiser w D_p + (1 − w) D_q,
    w = α p_σ / (α p_σ + (1 − α) q_σ), has a lower expected loss than D_p, D_q and ±20 %
    rescalings of itself (common random numbers, 400 000 draws)."""
    sigma_v, alpha_v, b2 = 0.5, 0.3, 0.09
    n = 400_000
    g = torch.Generator().manual_seed(1)
    real = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    fake = 0.3 * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    n1, n2 = torch.randn(2, n, 1, 1, 1, generator=g, dtype=torch.float64)
    sigma, alpha = torch.full((n,), sigma_v, dtype=torch.float64), torch.full((n,), alpha_v)

    def d_p(x: Tensor) -> Tensor:
        return x / (1 + sigma_v**2)

    def d_q(x: Tensor) -> Tensor:
        return x * b2 / (b2 + sigma_v**2)

    def d_mix(x: Tensor) -> Tensor:
        vp, vq = 1 + sigma_v**2, b2 + sigma_v**2
        lp = math.log(alpha_v) - 0.5 * x.square() / vp - 0.5 * math.log(vp)
        lq = math.log(1 - alpha_v) - 0.5 * x.square() / vq - 0.5 * math.log(vq)
        w = torch.sigmoid(lp - lq)
        return w * d_p(x) + (1 - w) * d_q(x)

    def loss(f: Any) -> float:
        psi = lambda x, s, c: f(x)  # noqa: E731
        teacher = lambda x, s, c: d_p(x)  # noqa: E731
        return float(mixture_score_loss(psi, teacher, fake, real, None, sigma, alpha.double(),
                                        n1, n2, 1.0).mean())

    best = loss(d_mix)
    for other in (d_p, d_q, lambda x: 0.8 * d_mix(x), lambda x: 1.2 * d_mix(x)):
        assert loss(other) > best * 1.001


def test_generator_direction_is_dmd_at_alpha_one_and_zero_without_alpha() -> None:
    g = torch.Generator().manual_seed(2)
    fake, real, noise = torch.randn(3, 5, 1, 4, 4, generator=g)
    sigma = torch.rand(5, generator=g) + 0.2
    teacher = lambda x, s, c: 0.5 * x  # noqa: E731
    psi = Const(lambda x, s: 0.5 * x, lambda x, s: 0.2 * x)  # ψ(·; 1) = D_T, ψ(·; 0) = D_fake
    x_t = fake + sigma[:, None, None, None] * noise
    scale = (real - 0.5 * (real + sigma[:, None, None, None] * noise)).abs().mean(dim=(1, 2, 3))
    g1 = generator_direction(psi, teacher, fake, real, None, sigma, torch.ones(5), noise)
    assert torch.allclose(g1, (0.2 * x_t - 0.5 * x_t) / scale[:, None, None, None])
    # the α-skew gradient is divided by α: at α = 1/2 the mixture is halfway here
    g_half = generator_direction(psi, teacher, fake, real, None, sigma, torch.full((5,), 0.5),
                                 noise)
    assert torch.allclose(g_half, g1)
    blind = Const(lambda x, s: 0.5 * x, lambda x, s: 0.5 * x)
    assert torch.equal(generator_direction(blind, teacher, fake, real, None, sigma,
                                           torch.ones(5), noise), torch.zeros_like(fake))
    # the surrogate loss moves x̃ along -g: its gradient is g / (B C H W)
    x = fake.clone().requires_grad_(True)
    generator_loss(x, g1).mean().backward()
    assert torch.allclose(x.grad, g1 / g1.numel())


def test_alpha_and_sigma_draws() -> None:
    g = torch.Generator().manual_seed(3)
    a = draw_alpha_score(40_000, g)
    levels = a * 1000
    assert torch.allclose(levels, levels.round(), atol=1e-3) and a.min() == 0 and a.max() <= 1
    zero = float((a == 0).float().mean())  # 1/4 + 3/4 · 1/1001; SE 0.0022
    assert abs(zero - (0.25 + 0.75 / 1001)) < 0.01
    assert abs(float(a[a > 0].mean()) - 0.5) < 0.01  # uniform on the grid otherwise
    b = draw_alpha_generator(40_000, g, alpha_min=0.5)
    assert float(b.min()) == 0.5 and float(b.max()) == 1.0
    assert torch.allclose(b * 1000, (b * 1000).round(), atol=1e-3)
    with pytest.raises(ValueError, match="alpha_min"):
        draw_alpha_generator(3, g, alpha_min=0.0)
    s = draw_sigma(10_000, g, 0.02, 5.0, 7.0)
    assert s.min() >= 0.02 and s.max() <= 5.0 and s.median() < 1.0  # ρ = 7 favours small σ
    t = draw_sigma(10_000, g, 0.02, 5.0, 7.0, 0.02, 0.98)
    edge = lambda u: (5.0 ** (1 / 7) + u * (0.02 ** (1 / 7) - 5.0 ** (1 / 7))) ** 7  # noqa: E731
    assert t.max() <= edge(0.02) and t.min() >= edge(0.98)


# ------------------------------------------------------------------ the loop


def _tiny_run(oracle: Any, steps: int, store: MemoryCheckpoints, losses: MemoryLog,
              checkpoint_every: int) -> Any:
    gen, mix = students(oracle, 4)
    s = settings(steps=steps, batch_size=4, generator_every=2, log_every=3,
                 checkpoint_every=checkpoint_every, lr_warmup_steps=5)
    return distill(oracle.teacher, gen, mix, oracle.fields, oracle.make_pair, s, store, losses,
                   progress=False)


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(oracle: Any) -> None:
    full_log = MemoryLog()
    full = _tiny_run(oracle, 13, MemoryCheckpoints(), full_log, 100)
    store, log = MemoryCheckpoints(), MemoryLog()
    part = _tiny_run(oracle, 7, store, log, 7)  # stops mid log interval, after a generator step
    assert part.step == 7
    log.rows.append(DistillRow(9, 9.9, 9.9, 9.9, 9.9))  # written after the checkpoint, then killed
    resumed = _tiny_run(oracle, 13, store, log, 100)
    assert resumed.step == 13
    for ours, theirs in ((full.ema, resumed.ema), (full.raw, resumed.raw),
                         (full.mixture, resumed.mixture)):
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    strip = lambda rows: [(r.step, r.score_loss, r.generator_loss, r.lr) for r in rows]  # noqa: E731
    assert strip(log.rows) == strip(full_log.rows) and [r.step for r in log.rows] == [3, 6, 9, 12]
    assert resumed.score_loss == full.score_loss and resumed.generator_loss == full.generator_loss
    # the generator did move: the run is not trivially identical
    assert full.raw.net.conv_out.weight.abs().sum() > 0


def test_the_core_reads_the_validated_distill_settings() -> None:
    fields = stage.DistillSettings.model_fields
    for name, annotation in DistillSettings.__annotations__.items():
        assert name in fields, name
        assert fields[name].annotation.__name__ == annotation, name


# ------------------------------------------------------------------ the Gaussian oracle
#
# A tiny run: 8 x 8 field, 2 x 2 block means (noise 0.05), U-Nets of width 8, 450 updates of
# batch 32 (~20 s on one core; every setting pinned here); 16 fresh observations x 100 members.
# Monte-Carlo error of the measured std ratio: ~1/sqrt(2 · 1600) = 1.8 % per pixel, less on the
# pixel mean. This short run is not converged (measured 0.76; the 10-minute benchmark gets
# closer to 1), so the tolerance 0.65-1.3 is about what it reaches, and ~15 SE above what the
# generator WITHOUT the SMD update gives (the teacher at sigma_g = 2.5: 0.37; the posterior
# mean: 0). The CRPS is compared with that of exact posterior members on the same truths
# (common random numbers): the posterior mean scores ~sqrt(2), the teacher at sigma_g 1.11,
# the distilled generator 1.01 (measured); the bound is 1.06.


def _ensemble(denoiser: nn.Module, cond: Tensor, members: int, sigma_g: float) -> np.ndarray:
    """Members [M, T, H·W] for the T conditions (member seeds as in draw_members)."""
    t = cond.shape[0]
    rows = torch.arange(t).repeat_interleave(members)
    seeds = [member_seed(0, i, m) for i in range(t) for m in range(members)]
    x = OneStep(sigma_g).sample(lambda x, s: denoiser(x, s, cond[rows]), (1, 8, 8), seeds)
    return x.reshape(t, members, -1).transpose(0, 1).numpy()


def test_distillation_spreads_a_collapsed_ensemble_on_the_oracle(oracle: Any) -> None:
    truth, cond, mean = oracle.test_set(16, seed=12345)
    truth_np, mean_np, std = truth.reshape(16, -1).numpy(), mean.numpy(), oracle.exact_std
    gen, mix = students(oracle, 8)
    before = copy.deepcopy(gen).eval()
    s = settings(steps=450, batch_size=32, lr_generator=1e-3, lr_score=3e-3, lr_warmup_steps=100,
                 generator_every=5, sigma_g=2.5, sigma_min=0.02, sigma_max=5.0, alpha_min=0.5,
                 ema_beta=0.99, checkpoint_every=1000, log_every=50)
    result = distill(oracle.teacher, gen, mix, oracle.fields, oracle.make_pair, s,
                     MemoryCheckpoints(), MemoryLog(), progress=False)

    members = 100
    exact = mean_np + np.einsum("ij,mtj->mti", np.linalg.cholesky(oracle.teacher.cov + 1e-10 *
                                np.eye(64)), np.random.default_rng(0).standard_normal(
                                    (members, 16, 64)))
    crps_exact = float(metrics.crps_fair(exact, truth_np).mean())

    def check(ens: np.ndarray) -> tuple[float, float]:
        m = metrics.oracle_metrics(ens, mean_np, std, truth_np)
        return m["std_ratio_mean"], float(metrics.crps_fair(ens, truth_np).mean()) / crps_exact

    ratio, crps = check(_ensemble(result.ema, cond, members, s.sigma_g))
    assert 0.65 <= ratio <= 1.3 and crps <= 1.06, (ratio, crps)
    # negative controls: the generator without the SMD update, and a zero-spread ensemble
    ratio0, crps0 = check(_ensemble(before, cond, members, s.sigma_g))
    assert ratio0 < 0.5 and crps0 > 1.08, (ratio0, crps0)
    ratio_m, crps_m = check(np.broadcast_to(mean_np, (members, *mean_np.shape)).copy())
    assert ratio_m == 0 and crps_m > 1.3


# ------------------------------------------------------------------ the stage

# read_model's refusal of onestep.pt (its format is not sgm-model-3), either wording
ONESTEP_REFUSED = r"onestep.pt: (not an sgm model file|a one-step model)"
DISTILL = {"steps": 6, "batch_size": 4, "generator_every": 2, "checkpoint_every": 3,
           "log_every": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distill")
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    ingest(root / "spec.yaml", root / "fields.zarr")
    observe(root / "spec.yaml", root / "fields.zarr", root / "obs.zarr")
    train_stage(root / "spec.yaml", root / "fields.zarr", root / "obs.zarr", root / "model.pt",
                MODEL, progress=False)
    stage.distill_stage(root / "model.pt", root / "fields.zarr", root / "obs.zarr",
                        root / "onestep.pt", DISTILL, progress=False)
    return root


def test_stage_writes_a_onestep_file_that_samples_batch_independently(pipeline: Path) -> None:
    one = read_onestep(pipeline / "onestep.pt")
    teacher = read_model(pipeline / "model.pt")
    assert one.meta["kind"] == "onestep" and one.meta["onestep"]["step"] == 6
    assert one.meta["onestep"]["teacher"]["sha256"] == teacher.digest
    assert one.meta["onestep"]["sigma_g"] == 2.5 and "recalibration" not in one.meta
    with pytest.raises(CorruptFileError, match=ONESTEP_REFUSED):
        read_model(pipeline / "onestep.pt")  # no multistep solver takes it for a denoiser
    with pytest.raises(CorruptFileError, match="model.pt: not a one-step model file"):
        read_onestep(pipeline / "model.pt")
    rows = (pipeline / "distill_state" / "distill_loss.csv").read_text().splitlines()
    assert rows[0] == stage.DISTILL_HEADER and [r.split(",")[0] for r in rows[1:]] == ["2", "4",
                                                                                         "6"]

    model = OneStepModel.from_state(one.weights, one.meta, torch.device("cpu"))
    obs = open_store(pipeline / "obs.zarr")
    index = layout.split_index(obs, "test")
    y = torch.from_numpy(layout.stack(obs, ["field"], index))
    a = model.sample(y, index, 5, seed=1, batch_size=3)
    b = model.sample(y, index, 5, seed=1, batch_size=64)
    assert a.shape == (4, 5, 1, 8, 12) and torch.equal(a, b)
    assert a.std(dim=1).mean() > 0  # members differ
    # one member = one network call on σ_g z, z from the member's seed
    cm = model.model
    z = torch.randn((1, 8, 12), generator=torch.Generator().manual_seed(
        member_seed(1, int(index[2]), 3)))
    cond = conditioning(cm.obs, cm.stats.forward(y[2:3]), cm.static)
    x = generate(cm.precond, z[None], cond, 2.5)
    x = cm.stats.inverse(cm.target.inverse(x, cm.stats.forward(y[2:3])))
    assert torch.allclose(x[0], a[2, 3], atol=1e-5)
    # the stage samples it with the workflow's settings: steps: auto needs no tuning here
    post = sample_stage(pipeline / "onestep.pt", pipeline / "obs.zarr", pipeline / "one.zarr",
                        {"method": "onestep", "steps": "auto", "members": 5, "seed": 1},
                        progress=False)
    np.testing.assert_array_equal(open_store(post).field.values, a[:, :, 0].numpy())


def test_stage_resumes_and_refuses_bad_input_in_one_line(pipeline: Path, tmp_path: Path) -> None:
    root = pipeline
    args = (root / "model.pt", root / "fields.zarr", root / "obs.zarr")
    work = tmp_path / "state"
    stage.distill_stage(*args, tmp_path / "a.pt", {**DISTILL, "steps": 4}, work, progress=False)
    stage.distill_stage(*args, tmp_path / "a.pt", DISTILL, work, progress=False)  # resumes
    resumed = read_onestep(tmp_path / "a.pt")
    once = read_onestep(root / "onestep.pt")
    assert all(torch.equal(resumed.weights[k], once.weights[k]) for k in once.weights)

    with FolderLock(work, what="distillation folder"), pytest.raises(LockedError, match="state"):
        stage.distill_stage(*args, tmp_path / "b.pt", DISTILL, work, progress=False)
    with pytest.raises(CorruptFileError, match=ONESTEP_REFUSED):
        stage.distill_stage(root / "onestep.pt", *args[1:], tmp_path / "c.pt", DISTILL,
                            tmp_path / "s2", progress=False)
    with pytest.raises(ValueError, match="--settings"):
        stage.distill_stage(*args, tmp_path / "d.pt", {"sigma_g": -1}, tmp_path / "s3",
                            progress=False)
    # a prior model has no observations to condition on
    prior = read_model(root / "model.pt")
    write_model(tmp_path / "prior.pt", prior.weights, {**prior.meta, "kind": "prior"})
    with pytest.raises(ValueError, match="prior.pt: a prior model"):
        stage.distill_stage(tmp_path / "prior.pt", *args[1:], tmp_path / "e.pt", DISTILL,
                            tmp_path / "s4", progress=False)
    # observations of another observation system
    wrong = {**prior.meta, "observation": {**prior.meta["observation"],
                                           "noise_std": {"field": 0.5}}}
    write_model(tmp_path / "other.pt", prior.weights, wrong)
    with pytest.raises(ValueError, match="obs.zarr: its observation model"):
        stage.distill_stage(tmp_path / "other.pt", *args[1:], tmp_path / "f.pt", DISTILL,
                            tmp_path / "s5", progress=False)
