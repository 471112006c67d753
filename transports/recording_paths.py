"""Where a call's recording may be written: `recorderFile` from the API, confined to a root.

`recorderFile` comes from the application, so it is treated as untrusted: ``{id}`` becomes the
session id (sanitised first, so an id cannot add path components), a relative path lands under the
recorder root, ``.wav`` is appended when missing, and the result must resolve — symlinks and
``..`` included — to a file under the root. Absolute paths are accepted only when they already
point under the root. A path that cannot be written (a directory, a name too long, a parent that is
a file or not writable) is refused here, before any recorder starts.

One live writer per path: `RecordingClaims` gives a path to the first call that asks for it until
that call ends; another call asking for it (or for one of its segment names, ``x.partN.wav``) is
refused and records nothing. The application learns it from an `error` event and may pick another
name, e.g. with ``{id}``. With a lock directory, the claim also holds across processes (a front and
its WebRTC workers, or two gateways sharing a recorder root): each claim is an exclusive `flock` on
a file there, which the kernel releases when its process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat

__all__ = ["CLAIMS_DIR", "RecordingClaims", "RecordingPathError", "resolve_recording", "safe_session_id"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SEGMENT = re.compile(r"\.part\d+(\.wav)$", re.IGNORECASE)
CLAIMS_DIR = ".claims"     # under the recorder root: the lock files of the recordings being written
NAME_MAX = 255      # bytes in one path component (Linux filesystems)
PATH_MAX = 4095     # bytes in a whole path


class RecordingPathError(ValueError):
    """A `recorderFile` that would be written outside the recorder root, or is not a file name."""


def safe_session_id(session_id: str) -> str:
    """The session id as one harmless path component: characters other than letters, digits,
    ``.``, ``_`` and ``-`` become ``_``, and ``..`` cannot survive."""
    safe = _UNSAFE.sub("_", session_id).replace("..", "__")
    if safe in ("", "."):
        return "_"
    return safe


def resolve_recording(recorder_file: str, session_id: str, root: str) -> str:
    """The real path of the recording file (symlinks resolved), or ``RecordingPathError``."""
    if not recorder_file or "\x00" in recorder_file:
        raise RecordingPathError(f"recorderFile {recorder_file!r} is not a usable path")
    if not root or "\x00" in root:
        raise RecordingPathError(f"recorder root {root!r} is not a usable path")
    name = recorder_file.replace("{id}", safe_session_id(session_id))
    if name.endswith(("/", os.sep)) or os.path.basename(name) in ("", ".", ".."):
        raise RecordingPathError(f"recorderFile {recorder_file!r} does not name a file")
    if not name.lower().endswith(".wav"):
        name += ".wav"
    real_root = os.path.realpath(root)
    candidate = os.path.join(real_root, name)  # an absolute name replaces the root here
    real = os.path.realpath(candidate)
    if os.path.commonpath((real, real_root)) != real_root or real == real_root:
        raise RecordingPathError(
            f"recorderFile {recorder_file!r} resolves to {real!r}, outside the recorder root {real_root!r}"
        )
    _check_writable(recorder_file, real)
    return real


def _check_writable(recorder_file: str, real: str) -> None:
    """Refuse now what opening the file would refuse later, after the recorder's restarts."""
    if len(os.fsencode(real)) > PATH_MAX:
        raise RecordingPathError(f"recorderFile {recorder_file!r}: path is longer than {PATH_MAX} bytes")
    for part in real.split(os.sep):
        if len(os.fsencode(part)) > NAME_MAX:
            raise RecordingPathError(f"recorderFile {recorder_file!r}: a name in it is longer than {NAME_MAX} bytes")
    try:
        st = os.lstat(real)
    except (FileNotFoundError, NotADirectoryError):
        pass  # the parents say why below
    except OSError as exc:
        raise RecordingPathError(f"recorderFile {recorder_file!r}: cannot be used ({exc.strerror})") from None
    else:
        if stat.S_ISDIR(st.st_mode):
            raise RecordingPathError(f"recorderFile {recorder_file!r} names a directory")
        if not stat.S_ISREG(st.st_mode):
            raise RecordingPathError(f"recorderFile {recorder_file!r} names something that is not a regular file")
    parent = os.path.dirname(real)
    while True:
        try:
            st = os.stat(parent)
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(parent)
            continue
        except OSError as exc:
            raise RecordingPathError(f"recorderFile {recorder_file!r}: cannot be used ({exc.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise RecordingPathError(f"recorderFile {recorder_file!r}: {parent!r} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RecordingPathError(f"recorderFile {recorder_file!r}: {parent!r} is not writable")
        return


class RecordingClaims:
    """Which call writes which recording: one live writer per path, until its call ends."""

    def __init__(self, lock_dir: str | None = None) -> None:
        self.lock_dir = lock_dir
        self._owner: dict[str, str] = {}            # claim key -> session id
        self._keys: dict[str, set[str]] = {}        # session id -> its claim keys
        self._locks: dict[str, tuple[str, int]] = {}    # claim key -> (lock file, its descriptor)

    @staticmethod
    def key(path: str) -> str:
        """Segment files (``x.part2.wav``) belong to their recording (``x.wav``)."""
        return _SEGMENT.sub(r"\1", path)

    def claim(self, path: str, session_id: str) -> str:
        key = self.key(path)
        owner = self._owner.get(key)
        if owner is not None and owner != session_id:
            raise _taken(path)
        if owner is None and self.lock_dir is not None:
            self._locks[key] = self._lock(key, path)
        self._owner[key] = session_id
        self._keys.setdefault(session_id, set()).add(key)
        return path

    def release_session(self, session_id: str) -> None:
        for key in self._keys.pop(session_id, ()):
            if self._owner.get(key) == session_id:
                del self._owner[key]
                lock = self._locks.pop(key, None)
                if lock is not None:
                    _unlock(*lock)

    def __len__(self) -> int:
        return len(self._owner)

    def _lock(self, key: str, path: str) -> tuple[str, int]:
        assert self.lock_dir is not None
        name = os.path.join(self.lock_dir, hashlib.sha256(os.fsencode(key)).hexdigest()[:40] + ".lock")
        try:
            os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
            # Bounded: each round means another process released (and removed) the file between
            # our open and our lock; three in a row would be a process claiming and releasing the
            # same name in a tight loop.
            for _ in range(3):
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise _taken(path) from None
                try:
                    same = os.stat(name).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    return name, fd
                os.close(fd)
        except OSError as exc:
            raise RecordingPathError(f"recorderFile {os.path.basename(path)!r}: its claim in {self.lock_dir!r} "
                                     f"cannot be taken ({exc.strerror or exc})") from None
        raise _taken(path)


def _taken(path: str) -> RecordingPathError:
    return RecordingPathError(f"recorderFile {os.path.basename(path)!r} is being recorded by another call; "
                              "this call is not recorded (use another name, e.g. with {id})")


def _unlock(name: str, fd: int) -> None:
    # Removed while still locked, so a process that opened it meanwhile sees, once it holds the
    # lock, that the file it locked is no longer the one named there, and tries again.
    try:
        os.unlink(name)
    except OSError:
        pass
    os.close(fd)
