"""Tests of sgm.io.checkpoint: atomic writes, rotation, corruption fallback, no pickles."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from sgm.io.checkpoint import (
    CorruptFileError,
    list_checkpoints,
    load_latest_checkpoint,
    load_model_file,
    save_checkpoint,
    save_model,
)


def _state(step: int) -> dict:
    return {
        "step": step,
        "weights": {"w": torch.full((3, 2), float(step))},
        "rng": torch.Generator().manual_seed(step).get_state(),
        "meta": {"name": "x", "sizes": [1, 2], "pair": (0.5, None), "flag": True},
    }


def test_save_keeps_newest_and_names_by_step(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        path = save_checkpoint(_state(step), tmp_path, step, keep=2)
        assert path == tmp_path / f"ckpt-{step:08d}.pt"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000030.pt", "ckpt-00000040.pt"]
    state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 40
    assert torch.equal(state["weights"]["w"], torch.full((3, 2), 40.0))
    assert state["meta"] == {"name": "x", "sizes": [1, 2], "pair": (0.5, None), "flag": True}
    # generator states survive the round trip
    g = torch.Generator()
    g.set_state(state["rng"])
    assert torch.equal(
        torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(40))
    )


def test_keep_three_and_stale_temp_files_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".ckpt-00000005.pt.tmp-abc123"  # left by a killed atomic_write
    stale.write_bytes(b"half a file")
    for step in range(1, 6):
        save_checkpoint(_state(step), tmp_path, step, keep=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4, 5]
    assert not stale.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_newest_falls_back_to_previous(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(_state(1), tmp_path, 1)
    newest = save_checkpoint(_state(2), tmp_path, 2)
    raw = newest.read_bytes()
    newest.write_bytes(
        {"truncate": raw[: len(raw) // 2], "garbage": b"\x00not a zip" * 50, "empty": b""}[damage]
    )
    with caplog.at_level(logging.WARNING, logger="sgm.io.checkpoint"):
        state = load_latest_checkpoint(tmp_path)
    assert state is not None and state["step"] == 1
    assert any("ckpt-00000002.pt" in r.getMessage() for r in caplog.records)


def test_no_checkpoint_gives_none(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "notes.txt").write_text("hello")
    assert load_latest_checkpoint(tmp_path) is None


class Payload:
    """A class whose unpickling would run code."""

    def __reduce__(self) -> tuple:
        return (print, ("pickled code ran",))


def test_load_rejects_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": Payload()}, path)
    with pytest.raises(CorruptFileError, match="pickled Python objects"):
        load_model_file(path)
    # ...and a checkpoint folder holding only such a file yields no state
    torch.save({"obj": Payload()}, tmp_path / "ckpt-00000001.pt")
    assert load_latest_checkpoint(tmp_path) is None


def test_save_refuses_non_plain_data(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Path"):
        save_model(tmp_path / "m.pt", {"where": tmp_path})
    with pytest.raises(TypeError):
        save_checkpoint({"obj": Payload()}, tmp_path, 1)
    assert list(tmp_path.iterdir()) == []  # nothing, not even a temp file, was left


def test_save_model_roundtrip_and_atomic_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.pt"
    save_model(path, {"ema": {"w": torch.arange(4.0)}, "meta": {"step": 3}})
    save_model(path, {"ema": {"w": torch.arange(5.0)}, "meta": {"step": 4}})
    state = load_model_file(path)
    assert torch.equal(state["ema"]["w"], torch.arange(5.0))
    assert state["meta"]["step"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_content_hash_detects_a_flipped_bit_and_a_foreign_file(tmp_path: Path) -> None:
    """A checkpoint whose stored tensors change by one bit fails its hash; an intact one and a
    re-saved one load; a torch file without a hash is refused."""
    state = {"w": torch.arange(64, dtype=torch.float32), "step": 3, "name": "x"}
    path = save_checkpoint(state, tmp_path, 3)
    assert torch.equal(load_model_file(path)["w"], state["w"])
    raw = torch.load(path, weights_only=True)
    raw["w"] = raw["w"].clone()
    raw["w"].view(torch.int32)[17] ^= 1  # the lowest mantissa bit of one weight
    torch.save(raw, path)  # the stored hash is now stale
    with pytest.raises(CorruptFileError, match="fails its content hash"):
        load_model_file(path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CorruptFileError, match="no content hash"):
        load_model_file(tmp_path / "plain.pt")
