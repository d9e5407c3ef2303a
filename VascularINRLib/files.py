"""Writing files so that a failure never leaves a half-written file or destroys an older one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import InputError


def check_output_folder(path) -> Path:
    """The output's folder must exist and be writable; InputError naming it otherwise."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {folder} is not writable")
    if path.is_dir():
        raise InputError(f"output {path} is a folder, not a file name")
    return path


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path` (same suffix); rename it over `path` on success only."""
    path = check_output_folder(path)
    suffix = "".join(path.suffixes) or path.suffix
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    except OSError as error:
        raise InputError(f"cannot write in {path.parent}: {error.strerror}") from None
    os.close(handle)
    try:
        yield temporary
        if os.path.getsize(temporary) == 0:
            raise InputError(f"nothing was written to {path}")
        os.chmod(temporary, _mode_for(path))
        os.replace(temporary, os.path.realpath(path))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _mode_for(path: Path) -> int:
    """An existing file keeps its mode; a new one gets the usual 0666 less the umask (not mkstemp's 0600)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
