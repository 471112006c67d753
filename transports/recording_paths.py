"""Where a call's recording may be written: `recorderFile` from the API, confined to a root.

`recorderFile` comes from the application, so it is treated as untrusted: ``{id}`` becomes the
session id (sanitised first, so an id cannot add path components), a relative path lands under the
recorder root, ``.wav`` is appended when missing, and the result must resolve — symlinks and
``..`` included — to a file under the root. Absolute paths are accepted only when they already
point under the root.
"""

from __future__ import annotations

import os
import re

__all__ = ["RecordingPathError", "resolve_recording", "safe_session_id"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


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
    return real
