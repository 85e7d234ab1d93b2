"""What a prior model learns: the anomaly target (sgm.core.anomaly) and the level-shift
augmentation (sgm.core.level_shift), with the train stage's conversions and refusals."""

from __future__ import annotations

import pytest
import torch

from sgm.config import ModelEntry, validate
from sgm.core.anomaly import AnomalyTarget
from sgm.core.conditioning import Standardiser, prior_pairs
from sgm.core.heavy_tailed import CensoredPowerTransform
from sgm.core.level_shift import level_shifted_pairs
from sgm.stages.train import _level_shift


def _identity(batch, generator):
    return batch, None


def test_zero_shift_is_the_unwrapped_pairs():
    make_pair = prior_pairs(None)
    assert level_shifted_pairs(make_pair, [0.0, 0.0]) is make_pair


def test_offsets_are_uniform_per_member_with_the_stated_spread():
    x = torch.randn(4000, 2, 6, 5, generator=torch.Generator().manual_seed(1))
    shifted = level_shifted_pairs(_identity, [0.5, 2.0])
    out, _ = shifted(x, torch.Generator().manual_seed(2))
    delta = out - x
    # one offset per member and variable, the same at every pixel
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-6)
    d = delta[:, :, 0, 0]
    # std of 4000 Gaussian draws: standard error ~1.1 %, so 5 % is > 4 standard errors
    assert d.std(0).sub(torch.tensor([0.5, 2.0])).abs().div(torch.tensor([0.5, 2.0])).max() < 0.05
    assert d.mean(0).abs().max() < 4 * 2.0 / 4000 ** 0.5
    # uncorrelated between variables
    assert abs(torch.corrcoef(d.T)[0, 1]) < 0.06
    # the same generator state gives the same bits; another seed other offsets
    again, _ = shifted(x, torch.Generator().manual_seed(2))
    assert torch.equal(out, again)
    other, _ = shifted(x, torch.Generator().manual_seed(3))
    assert not torch.equal(out, other)


def test_a_conditional_pair_observes_the_shifted_field():
    seen = {}

    def observe(batch, generator):
        seen["batch"] = batch.clone()
        return batch, batch.mean(dim=(2, 3))

    x = torch.zeros(8, 1, 4, 4)
    target, y = level_shifted_pairs(observe, [1.0])(x, torch.Generator().manual_seed(0))
    assert torch.equal(target, seen["batch"])
    assert torch.allclose(y, target[:, :, 0, 0])
    assert target.abs().sum() > 0


def test_bad_level_shifts_are_refused():
    with pytest.raises(ValueError, match="level shift"):
        level_shifted_pairs(_identity, [-1.0])
    with pytest.raises(ValueError, match="2 standard deviations for 1 variables"):
        level_shifted_pairs(_identity, [1.0, 1.0])(torch.zeros(2, 1, 3, 3), torch.Generator())
    with pytest.raises(ValueError, match="level_shift"):
        validate(ModelEntry, {"train": {"level_shift": -0.5}}, "--settings")


def test_the_stage_converts_to_standardised_units_and_refuses_what_has_no_meaning():
    st = Standardiser(("tas", "pr"), (280.0, 1.0), (4.0, 2.0))
    assert _level_shift(0.0, st, paired=False) is None
    assert _level_shift({}, st, paired=False) is None
    assert _level_shift(2.0, st, paired=False) == [0.5, 1.0]
    assert _level_shift({"tas": 2.0}, st, paired=False) == [0.5, 0.0]
    with pytest.raises(ValueError, match=r"names \['uas'\]"):
        _level_shift({"uas": 1.0}, st, paired=False)
    with pytest.raises(ValueError, match="paired"):
        _level_shift(1.0, st, paired=True)
    transform = CensoredPowerTransform(scale=5.0, offset=0.3, exponent=2.0)
    rain = Standardiser(("tas", "pr"), (280.0, 1.0), (4.0, 2.0), (None, transform))
    assert _level_shift({"tas": 2.0}, rain, paired=False) == [0.5, 0.0]
    with pytest.raises(ValueError, match="level_shift of pr"):
        _level_shift(1.0, rain, paired=False)


def _fields(n=400, seed=0):
    """z[N, 2, 5, 6]: a fixed spatial pattern plus year-to-year noise of std 0.1 and 0.3."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randn(2, 5, 6, generator=g) * 3
    return pattern + torch.randn(n, 2, 5, 6, generator=g) * torch.tensor([0.1, 0.3]).view(2, 1, 1)


def test_the_anomaly_target_has_unit_spread_and_inverts_exactly():
    z = _fields()
    target = AnomalyTarget.fit(z)
    assert torch.allclose(target.scale, torch.tensor([0.1, 0.3]), rtol=0.03)
    u = target.forward(z)
    assert torch.allclose(u.mean(0), torch.zeros(2, 5, 6), atol=1e-5)
    assert torch.allclose(u.var(0).mean((1, 2)), torch.ones(2), atol=1e-4)
    assert torch.allclose(target.inverse(u), z, atol=1e-5)
    # members [T, M, C, H, W] with channels at dim 2
    assert torch.allclose(target.inverse(u.view(40, 10, 2, 5, 6), dim=2), z.view(40, 10, 2, 5, 6),
                          atol=1e-5)
    again = AnomalyTarget.from_meta(target.to_meta())
    assert torch.equal(again.mean, target.mean) and torch.equal(again.scale, target.scale)
    assert AnomalyTarget.from_meta(None) is None


def test_with_a_level_shift_the_augmented_anomalies_have_unit_spread():
    z = _fields(n=2000)
    tau = [0.2, 0.0]
    target = AnomalyTarget.fit(z, tau)
    expected = torch.tensor([(0.1 ** 2 + 0.2 ** 2) ** 0.5, 0.3])
    assert torch.allclose(target.scale, expected, rtol=0.03)
    assert torch.allclose(target.pattern_scale, torch.tensor([0.1, 0.3]) / expected, rtol=0.03)
    assert target.pattern_unit == pytest.approx(0.1 / expected[0].item(), rel=0.03)
    assert AnomalyTarget.fit(z).pattern_unit == 1.0
    scaled = [t / s for t, s in zip(tau, target.scale.tolist(), strict=True)]
    shifted = level_shifted_pairs(_identity, scaled)
    u, _ = shifted(target.forward(z), torch.Generator().manual_seed(0))
    # per-pixel variance over members: the noise plus the shift, in units of the scale
    assert torch.allclose(u.var(0).mean((1, 2)), torch.ones(2), atol=0.08)
    # the patterns (departures from the domain mean) are those of the unshifted anomalies
    patterns = u - u.mean(dim=(2, 3), keepdim=True)
    plain = target.forward(z) - target.forward(z).mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(patterns, plain, atol=1e-5)


def test_constant_fields_have_no_anomaly_scale():
    with pytest.raises(ValueError, match="vary in time"):
        AnomalyTarget.fit(torch.ones(5, 1, 3, 3))
    with pytest.raises(ValueError, match="at least 2"):
        AnomalyTarget.fit(torch.ones(1, 1, 3, 3))


def test_the_targets_a_model_kind_may_learn():
    assert validate(ModelEntry, {"model": {"kind": "prior"}}, "s").model.target == "anomaly"
    assert validate(ModelEntry, {}, "s").model.target == "residual"
    with pytest.raises(ValueError, match="anomaly is for prior models"):
        validate(ModelEntry, {"model": {"target": "anomaly"}}, "--settings")
