"""Files that are either complete or absent: write a temporary sibling, then rename it.

``os.replace`` is atomic on POSIX file systems, so a reader sees the previous file or the new
one, never a partial one, even when the writer is killed.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# A writer that fails with this little room left on its device failed because the disk is full,
# whatever the library says (torch.save reports "unexpected pos", zarr an encoding error).
FULL_BELOW_BYTES = 16 * 2**20


def raise_if_disk_full(path: Path, exc: BaseException) -> None:
    """Raise OSError(ENOSPC) naming ``path`` if its device has almost no space left."""
    try:
        free = shutil.disk_usage(path.parent if not path.is_dir() else path).free
    except OSError:
        return
    if free < FULL_BELOW_BYTES:
        raise OSError(errno.ENOSPC, "No space left on device", str(path)) from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None], durable: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then move it into place.

    Args:
        write: writes the complete file at the path it is given.
        durable: fsync the file and its folder, so the new file survives a power loss too
            (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            write(tmp)
        except OSError:
            raise
        except Exception as exc:
            raise_if_disk_full(path, exc)
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; honour the umask instead
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_files_together(files: list[tuple[Path, bytes]]) -> Path:
    """Write files that belong together (a page and its figures); the last one is the page.

    Every file is written completely to a temporary sibling first, so a failure (a full disk)
    leaves the previous files untouched. Then the old last file is removed, the others are
    moved into place, and the last one last: a kill during the renames leaves the set without
    its page, visibly incomplete, never an old page beside new figures. Returns the last path.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in path.parent.glob(f".{path.name}.tmp-*"):
                stale.unlink(missing_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
            os.close(fd)
            staged.append((Path(name), path))
            try:
                Path(name).write_bytes(data)
            except OSError:
                raise
            except Exception as exc:
                raise_if_disk_full(path, exc)
                raise
            os.chmod(name, 0o666 & ~_umask())
        last = staged[-1][1]
        last.unlink(missing_ok=True)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return last
