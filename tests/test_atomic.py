"""Atomic file writes: complete or absent, readable as the umask says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sgm.io.atomic import atomic_write, atomic_write_text


def test_written_file_has_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.html", "<p>hi</p>")
    finally:
        os.umask(old)
    assert (tmp_path / "a.html").read_text() == "<p>hi</p>"
    assert (tmp_path / "a.html").stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
