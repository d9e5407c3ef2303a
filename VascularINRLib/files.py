"""Writing files so that a failure or a signal never leaves a half-written file or destroys an older one.

Every output is first written to a temporary file beside it, named `.<name>.vinr-tmp-<pid>-<token><suffix>`,
checked (not empty, and read back where a `verify` is given), and only then renamed over the output.
All the outputs of one command form one transaction (`output_transaction`): each is written and checked
first, then all are renamed together while SIGINT, SIGTERM and SIGHUP wait; if a rename fails, the ones
already made are undone. On any failure or signal every temporary file is removed and every older file
stays as it was, byte for byte. SIGKILL cannot be caught: the temporary files it leaves behind are
removed by the next write into that folder (they carry the dead process's id).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .errors import InputError

TEMPORARY_TAG = ".vinr-tmp-"
BACKUP_TAG = ".vinr-old-"
_OURS = re.compile(r"^\..+(?:\.vinr-tmp-|\.vinr-old-)(\d+)-[0-9a-f]+")
_DEFERRED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_STALE_AFTER_S = 24 * 3600.0  # where process ids cannot be checked (Windows), a day-old temporary file is stale

_local = threading.local()
_committed: List[Path] = []  # every output this process renamed into place (for a truthful message on a signal)


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


def committed_outputs() -> List[Path]:
    """The outputs this process has renamed into place so far, oldest first."""
    return list(_committed)


def temporary_name(path: Path, tag: str = TEMPORARY_TAG) -> Path:
    """A fresh name beside `path` that marks it as ours and names this process; it keeps the suffix."""
    suffix = "".join(path.suffixes) if path.name.count(".") < 4 else path.suffix
    return path.parent / f".{path.name}{tag}{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def remove_stale_temporaries(folder) -> List[Path]:
    """Remove the temporary files and folders that a killed VascularINR process left in `folder`
    (their process id no longer runs); returns what was removed. Other files are never touched."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _OURS.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or not _is_stale(int(match.group(1)), entry):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _is_stale(pid: int, entry) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        try:
            return time.time() - entry.stat(follow_symlinks=False).st_mtime > _STALE_AFTER_S
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs, as another user
        return False
    return False


@contextlib.contextmanager
def signals_deferred():
    """SIGINT, SIGTERM and SIGHUP wait until the block ends (main thread, POSIX); elsewhere a no-op."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class OutputTransaction:
    """The outputs of one command: staged one by one, renamed into place all together by `commit`."""

    def __init__(self):
        self.staged: List[Tuple[Path, Path]] = []  # (temporary, destination)
        self.created_folders: List[Path] = []

    def make_folder(self, folder) -> Path:
        """Create `folder` (its parent must exist) if it is absent; an abort removes it again if empty."""
        folder = Path(folder)
        if not folder.is_dir():
            try:
                folder.mkdir()
            except OSError as error:
                raise InputError(f"cannot create folder {folder}: {error.strerror}") from None
            self.created_folders.append(folder)
        return folder

    def stage(self, temporary: Path, destination: Path) -> None:
        for index, (earlier, target) in enumerate(self.staged):
            if target == destination:  # the same output written twice: the last one counts
                _remove(earlier)
                del self.staged[index]
                break
        self.staged.append((temporary, destination))

    def commit(self) -> None:
        staged, self.staged = self.staged, []
        _replace_all(staged)

    def abort(self) -> None:
        staged, self.staged = self.staged, []
        for temporary, _ in staged:
            _remove(temporary)
        for folder in reversed(self.created_folders):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        self.created_folders = []


def active_transaction() -> Optional[OutputTransaction]:
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def output_transaction():
    """Every `atomic_output` inside the block (same thread) is renamed into place only when the block
    ends without an error; otherwise none is, and the older files stay as they were."""
    transaction = OutputTransaction()
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(transaction)
    try:
        yield transaction
        stack.pop()
        transaction.commit()
        transaction.created_folders = []
    finally:
        if stack and stack[-1] is transaction:
            stack.pop()
        transaction.abort()


@contextlib.contextmanager
def outside_transaction():
    """Writes inside the block are renamed into place at once (e.g. into a temporary folder)."""
    saved = getattr(_local, "stack", None)
    _local.stack = []
    try:
        yield
    finally:
        _local.stack = saved


@contextlib.contextmanager
def atomic_output(path, verify: Optional[Callable[[str], bool]] = None):
    """Yield a temporary path beside `path` (same suffix). When the block succeeds, the file is checked
    (not empty, and `verify(temporary)` true: it reads back) and renamed over `path`,
    at once or, inside an `output_transaction`, when the transaction ends. A failure, including a full
    disk, is an InputError naming `path`; the temporary file is removed and `path` is left as it was."""
    path = check_output_folder(path)
    remove_stale_temporaries(path.parent)
    temporary = temporary_name(path)
    try:
        with open(temporary, "xb"):
            pass
    except OSError as error:
        raise InputError(f"cannot write in {path.parent}: {error.strerror}") from None
    try:
        try:
            yield str(temporary)
            if os.path.getsize(temporary) == 0:
                raise InputError(f"nothing was written to {path}")
            if verify is not None and not verify(str(temporary)):
                raise InputError(f"{path}: did not write completely (is the disk full?)")
            os.chmod(temporary, _mode_for(path))
        except InputError:
            raise
        except OSError as error:
            raise InputError(f"cannot write {path}: {error.strerror or error}") from None
        except Exception:  # a library's own error type for a failed write (torch, matplotlib)
            if disk_full(path.parent):
                raise InputError(f"cannot write {path}: no space left on the device") from None
            raise
    except BaseException:
        _remove(temporary)
        raise
    _stage_or_replace(temporary, path)


@contextlib.contextmanager
def atomic_folder(folder):
    """Yield a new temporary folder beside `folder`; when the block succeeds it replaces `folder` (an
    older one is removed only once the new one is in place). Writes inside the block go straight into
    the temporary folder. A failure or a signal leaves `folder` as it was."""
    folder = Path(folder)
    parent = folder.parent if str(folder.parent) else Path(".")
    remove_stale_temporaries(parent)
    temporary = temporary_name(folder)
    try:
        temporary.mkdir()
    except OSError as error:
        raise InputError(f"cannot write in {parent}: {error.strerror}") from None
    try:
        try:
            with outside_transaction():
                yield temporary
            for item in [temporary, *temporary.rglob("*")]:
                os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_umask())
        except OSError as error:
            raise InputError(f"cannot write {folder}: {error.strerror or error}") from None
    except BaseException:
        _remove(temporary)
        raise
    _stage_or_replace(temporary, folder)


def _stage_or_replace(temporary: Path, destination: Path) -> None:
    """Into the transaction of this thread, if one is open; else in place at once."""
    transaction = active_transaction()
    if transaction is not None:
        transaction.stage(temporary, destination)
    else:
        _replace_all([(temporary, destination)])


def _replace_all(staged: List[Tuple[Path, Path]]) -> None:
    """Rename each temporary over its destination with the signals deferred; if one fails, undo the
    others (older files come back from hard links or renamed backups) and raise InputError."""
    done: List[Tuple[Path, Optional[Path]]] = []
    failed = Path(staged[0][1]) if staged else None
    with signals_deferred():
        try:
            for temporary, destination in staged:
                target, backup = Path(os.path.realpath(destination)), None
                failed = target
                if os.path.lexists(target):
                    if target.is_dir() != Path(temporary).is_dir():  # never a folder for a file, or back
                        raise IsADirectoryError(errno.EISDIR, "a folder is in the way" if target.is_dir() else
                                                "a file is in the way")
                    backup = temporary_name(target, BACKUP_TAG)
                    if target.is_dir() or not _hard_link(target, backup):
                        os.replace(target, backup)
                done.append((target, backup))
                os.replace(temporary, target)
        except OSError as error:
            for target, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is None:
                        _remove(target)
                    elif os.path.lexists(backup):
                        if target.is_dir():
                            _remove(target)
                        os.replace(backup, target)
            for temporary, _ in staged:
                _remove(temporary)
            others = " (the other outputs were left as they were)" if len(staged) > 1 else ""
            raise InputError(f"cannot write {failed}: {error.strerror or error}{others}") from None
        for target, backup in done:
            if backup is not None:
                _remove(backup)
            _committed.append(target)


def _hard_link(target: Path, backup: Path) -> bool:
    try:
        os.link(target, backup)
        return True
    except OSError:  # file systems without hard links: the caller renames instead
        return False


def _remove(path) -> None:
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass


def disk_full(folder) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """An existing file keeps its mode; a new one gets the usual 0666 less the umask (not 0600)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    return 0o666 & ~_umask()
