"""Tests of sgm.core.ema: warm-up decay and the running average."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgm.core.ema import EMA, ema_decay


def test_warmup_decay_formula() -> None:
    assert ema_decay(0, 0.999) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay(90, 0.999) == pytest.approx(91 / 100)
    # the warm-up curve crosses beta = 0.999 at n = 8990
    assert ema_decay(8989, 0.999) == pytest.approx(8990 / 8999)
    assert ema_decay(8990, 0.999) == 0.999
    assert ema_decay(10**6, 0.999) == 0.999
    assert ema_decay(0, 0.9, warmup=False) == 0.9


def _scalar_model(value: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_hand_computation(warmup: bool) -> None:
    beta = 0.5
    model = _scalar_model(4.0)
    ema = EMA(model, beta=beta, warmup=warmup)
    values = [2.0, -1.0, 3.0, 0.5, 10.0]
    # by hand: start from 4; with warm-up d_n = min(0.5, (1+n)/(10+n)) = 0.1, 2/11, 3/12,
    # 4/13, 5/14 (all below 0.5); without, d = 0.5 throughout
    decays = [0.1, 2 / 11, 3 / 12, 4 / 13, 5 / 14] if warmup else [0.5] * 5
    expected = 4.0
    for v, d in zip(values, decays, strict=True):
        with torch.no_grad():
            model.weight.fill_(v)
        assert ema.decay == pytest.approx(d)
        ema.update(model)
        expected = d * expected + (1 - d) * v
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.num_updates == 5
    # the EMA copy does not alias the model and is frozen in eval mode
    assert model.weight.item() == 10.0
    assert not ema.module.training and not ema.module.weight.requires_grad


def test_buffers_are_copied_and_copy_to_writes_back() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, beta=0.9)
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 3.0))
    target = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema.copy_to(target)
    for a, b in zip(target.parameters(), ema.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_dict_roundtrip_continues_identically() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, beta=0.99)
    for _ in range(4):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 3))
        ema.update(model)
    restored = EMA(nn.Linear(3, 2), beta=0.5, warmup=False)
    restored.load_state_dict(ema.state_dict())
    assert (restored.beta, restored.warmup, restored.num_updates) == (0.99, True, 4)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    restored.update(model)
    assert torch.equal(ema.module.weight, restored.module.weight)
    assert torch.equal(ema.module.bias, restored.module.bias)
