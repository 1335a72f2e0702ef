"""File modes of everything a run writes: private by default, group-readable on request.

Login nodes of supercomputers are shared by hundreds of users, and the umask
there is often 022 or 002: files made with the defaults are readable (or
writable) by everyone or by the whole group.  Every directory and file the
project makes goes through here and gets an explicit mode, whatever the
umask: 0700/0600 by default, 0750/0640 with ``sharing="group"`` (for a team
that reads each other's tables).  Keys are always private.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Modes:
    """Permission bits for the directories and files of one sharing level."""

    dir: int
    file: int


#: Sharing level name -> modes.
SHARING = {"private": Modes(0o700, 0o600), "group": Modes(0o750, 0o640)}


def modes(sharing: str = "private") -> Modes:
    """The modes of ``sharing`` (``"private"`` or ``"group"``)."""
    try:
        return SHARING[sharing]
    except KeyError:
        raise ValueError(f"sharing={sharing!r}: expected one of {sorted(SHARING)}") from None


def make_dir(path: PathLike, sharing: str = "private") -> Path:
    """Create ``path`` and its missing parents with the directory mode of ``sharing``.

    Parents that exist keep their mode (they may be the user's own, such as
    the working directory); the ones made here, and ``path`` itself, get the
    mode exactly, whatever the umask.
    """
    path = Path(path)
    mode = modes(sharing).dir
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:  # made meanwhile by a peer rank
            pass
        os.chmod(d, mode)
    return path


def new_dir(path: PathLike, sharing: str = "private") -> Path:
    """Create the single directory ``path`` with the mode of ``sharing``; it must not exist.

    Exclusive like ``mkdir(2)``: two writers racing for one name never both
    get it (:class:`FileExistsError` for the loser).  The parent must exist.
    """
    path = Path(path)
    mode = modes(sharing).dir
    os.mkdir(path, mode)
    # mkdir applied the umask, which only takes bits away: this restores
    # group bits a strict umask removed and never widens beyond ``mode``.
    os.chmod(path, mode)
    return path


def private_dir(path: PathLike) -> Path:
    """``make_dir(path)``, and make an existing ``path`` private too."""
    path = make_dir(path)
    os.chmod(path, 0o700)
    return path


def open_new(path: PathLike, sharing: str = "private", exclusive: bool = True) -> int:
    """A file descriptor of a new file with the file mode of ``sharing``, opened for writing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_EXCL if exclusive else 0) | getattr(os, "O_CLOEXEC", 0)
    mode = modes(sharing).file
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (replaced atomically), readable by this user only."""
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    fd = open_new(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_log(path: PathLike, sharing: str = "private") -> int:
    """A descriptor of log or pid file ``path``, opened for appending with the mode of ``sharing``.

    Never follows a symbolic link at ``path`` (``O_NOFOLLOW``), and refuses
    anything but a regular file of this user there: a link or a file
    planted in the run directory does not make the run write elsewhere.
    An existing file keeps its content and gets the mode.
    """
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    mode = modes(sharing).file
    try:
        fd = os.open(path, flags, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PermissionError(f"{os.fspath(path)} is a symbolic link: refusing to write through it") from None
        if err.errno == errno.ENXIO:  # a FIFO with no reader (O_NONBLOCK: never waited on)
            raise PermissionError(f"{os.fspath(path)} is not a regular file of this user: refusing to write to it"
                                  ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(f"{os.fspath(path)} is not a regular file of this user: refusing to write to it")
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


class PrivateFileError(PermissionError):
    """A file trusted with secrets or instructions is a link, not a regular file, someone else's, or not private."""


def read_private(path: PathLike, what: str = "file", limit: int = 1 << 20) -> bytes:
    """The content of ``path`` (at most ``limit`` bytes), only if it is a private regular file of this user.

    The checks are made on the open file (``fstat`` of a descriptor opened
    with ``O_NOFOLLOW``), so the file cannot be swapped for a link or another
    file between the check and the read.  ``what`` names the file in the
    error (``"channel file"``, ``"pilot description"``).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    PrivateFileError
        A link, a FIFO or other non-regular file, a file of another user, or
        one that its group or others may read or write.
    """
    try:
        # O_NONBLOCK: a FIFO planted at the path is opened (and refused below) instead of waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        why = "it is a symbolic link" if err.errno == errno.ELOOP else err
        raise PrivateFileError(f"cannot read the {what} {os.fspath(path)}: {why}") from err
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise PrivateFileError(f"{os.fspath(path)}: the {what} must belong to this user and be private "
                                   f"(owner uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}, "
                                   f"{'a regular file' if stat.S_ISREG(st.st_mode) else 'not a regular file'})")
        try:
            return f.read(limit)
        except OSError as err:
            raise PrivateFileError(f"cannot read the {what} {os.fspath(path)}: {err}") from err


class UnsafeDirectoryError(PermissionError):
    """A directory of the run belongs to someone else, or others may write to it (as ssh's StrictModes)."""


#: Names Parsl gives its per-run directories inside the user's run directory.
_PARSL_RUN = re.compile(r"^\d{3,}$")


def check_owned_dir(path: PathLike, follow: bool = False) -> os.stat_result:
    """Raise :class:`UnsafeDirectoryError` naming ``path`` unless it is a directory of this user that
    nobody else may write to (no group or other write bit); ``follow``: ``path`` may be a link to one."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as err:
        raise UnsafeDirectoryError(f"{os.fspath(path)}: cannot check the run directory: {err}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectoryError(f"{os.fspath(path)} is not a directory (a link or a file in the run's place)")
    if st.st_uid != os.getuid():
        raise UnsafeDirectoryError(f"{os.fspath(path)} belongs to uid {st.st_uid}, not to this user: refusing to "
                                   "run in it (another user could swap what the run writes there)")
    if st.st_mode & 0o022:
        raise UnsafeDirectoryError(f"{os.fspath(path)} is writable by {'others' if st.st_mode & 0o002 else 'its group'}"
                                   f" (mode {oct(stat.S_IMODE(st.st_mode))}): refusing to run in it, as a member "
                                   f"could swap its entries; `chmod go-w {os.fspath(path)}` if that is wanted")
    return st


def secure_run_dir(parsl_run_dir: PathLike, sharing: str = "private") -> None:
    """Make Parsl's run directory (``runinfo/NNN``) and the user's run directory above it safe, or refuse.

    Parsl makes both with the umask (``runinfo/NNN`` is 0755 under umask
    022, 0775 under 002).  Parsl's per-run directory is this run's: it gets
    the mode of ``sharing``.  The user's run directory (``runinfo``) must
    belong to the user; one that others may write to is fixed (``go-w``)
    only when it holds nothing but Parsl's run directories, which is how
    Parsl left it under a lax umask, and refused otherwise.
    """
    run = Path(parsl_run_dir)
    if not os.path.lexists(run):  # an executor started outside Parsl: nobody made its run directory yet
        make_dir(run, sharing)
    check_owned_dir_or_fix(run.parent)
    check_owned_dir_or_fix(run, mode=modes(sharing).dir)


def make_run_dirs(parsl_run_dir: PathLike, base_dir: PathLike, sharing: str = "private") -> None:
    """:func:`secure_run_dir`, then make an executor's directory ``base_dir`` under it with the mode of
    ``sharing``; raise :class:`UnsafeDirectoryError` naming the first directory that is not safe."""
    secure_run_dir(parsl_run_dir, sharing)
    make_dir(base_dir, sharing)
    check_owned_dir(base_dir)


def check_owned_dir_or_fix(path: Path, mode: Optional[int] = None) -> os.stat_result:
    """:func:`check_owned_dir`, after setting ``mode`` (a directory of this run) or removing the group and
    other write bits of a user run directory that holds only Parsl's run directories."""
    try:
        st = os.stat(path) if mode is None else os.lstat(path)
    except OSError as err:
        raise UnsafeDirectoryError(f"{path}: cannot check the run directory: {err}") from None
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
        if mode is not None:
            os.chmod(path, mode)
        elif st.st_mode & 0o022 and all(_PARSL_RUN.match(n) for n in os.listdir(path)):
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o022)
    return check_owned_dir(path, follow=mode is None)
