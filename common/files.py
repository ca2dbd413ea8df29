"""File helpers shared by the compiler and the deploy side (no heavy imports)."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

#: a temporary file of another host (a shared folder) is stale after this long
STALE_SECONDS = 3600


def atomic_write(path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, then
    rename it into place: a crash or an error never leaves a half-written file, and
    an existing file stays as it was.

    The file gets the mode a plain ``open`` would give it (``0o666`` less the umask),
    or keeps the mode of the file it replaces.  The temporary file is named
    ``.NAME.PID.XXXX.tmp``; one left behind by a killed writer (its process is gone,
    or it is over an hour old) is removed by the next write of ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temporaries(path) -> list[Path]:
    """Remove the temporary files of earlier writes of ``path`` whose writer is gone;
    returns them."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        m = pattern.fullmatch(p.name)
        if m is None:
            continue
        try:
            old = time.time() - p.lstat().st_mtime > STALE_SECONDS
            if old or not _alive(int(m.group(1))):
                p.unlink()
                removed.append(p)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def atomic_directory(path, fill: Callable[[Path], object], *, replaceable: Callable[[Path], bool]) -> Path:
    """Make the folder ``path`` through ``fill(folder)`` on a temporary folder beside it,
    then move it into place: an error or a crash while filling never leaves a partial
    folder at ``path``.  An existing ``path`` is replaced only if ``replaceable(path)``
    says it may be (e.g. it is an earlier output of the same command); otherwise
    ``FileExistsError`` is raised before anything is written.  The old folder is moved
    aside first and removed after the new one is in place."""
    import shutil

    path = Path(path)
    if path.is_symlink() or path.exists():
        if not path.is_dir() or path.is_symlink() or (any(path.iterdir()) and not replaceable(path)):
            raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        m = re.fullmatch(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp", stale.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
            os.replace(path, old / "old")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
