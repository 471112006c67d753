"""Call recordings as 16-bit PCM WAV files that are valid after every write.

The header's RIFF and data sizes are rewritten after each chunk of audio, so a process that is
killed mid-call (SIGKILL, OOM) leaves a file that any WAV reader opens, holding everything written
up to the last completed `write`. Writes go straight to the file descriptor (no user-space buffer):
once `write` returns, the bytes are the operating system's, which survives the process but not a
power loss — recordings are not fsync'ed, because one fsync per chunk per call would cost more
than the whole media plane.

A recording that is restarted mid-call continues in a new segment file beside the first:
segment 0 is the resolved path itself (``call.wav``), segment n > 0 is ``call.partN.wav``.
"""

from __future__ import annotations

import os
import struct

import numpy as np

__all__ = ["WavSink", "open_recording", "segment_path"]

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
HEADER_SIZE = _HEADER.size               # 44: RIFF, a 16-byte fmt chunk, the data chunk header
_RIFF_SIZE_AT = 4
_DATA_SIZE_AT = 40
_MAX_DATA = 0xFFFFFFFF - (HEADER_SIZE - 8)  # the RIFF size field is 32 bits and counts from byte 8
_PCM = 1
_SAMPLE = np.dtype("<i2")


class WavSink:
    """A 16-bit PCM WAV file being written: ``write(left, right)`` appends one chunk.

    ``channels=2`` interleaves left and right; ``channels=1`` writes their sum (saturated), a mono
    mix of both sides. A file whose data would pass the format's 4 GiB limit raises
    ``OverflowError`` instead of wrapping the size fields (about 18 h at 16 kHz stereo): the
    recorder fails and continues in the next segment.
    """

    __slots__ = ("path", "samplerate", "channels", "frames_written", "_fd", "_data_bytes")

    def __init__(self, path: str, samplerate: int, channels: int = 2) -> None:
        if samplerate <= 0:
            raise ValueError(f"samplerate must be positive, got {samplerate}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.path = path
        self.samplerate = samplerate
        self.channels = channels
        self.frames_written = 0
        self._data_bytes = 0
        # O_NOFOLLOW: a recording never writes through a symlink planted where the file should be.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(path, flags, 0o644)
        try:
            os.write(self._fd, self._header(0))
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"{self.frames_written} frames"
        return f"<WavSink {self.path!r} {self.samplerate} Hz x{self.channels} {state}>"

    @property
    def closed(self) -> bool:
        return self._fd is None

    @property
    def bytes_written(self) -> int:
        """Size of the file: header plus audio data."""
        return HEADER_SIZE + self._data_bytes

    def _header(self, data_bytes: int) -> bytes:
        block_align = 2 * self.channels
        return _HEADER.pack(
            b"RIFF", HEADER_SIZE - 8 + data_bytes, b"WAVE",
            b"fmt ", 16, _PCM, self.channels, self.samplerate,
            self.samplerate * block_align, block_align, 16,
            b"data", data_bytes,
        )

    def write(self, left: np.ndarray, right: np.ndarray) -> None:
        """Append one chunk (equal-length int16 arrays) and make the header describe it."""
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.path}: write to a closed recording")
        if len(left) != len(right):
            raise ValueError(f"channel lengths differ: {len(left)} left, {len(right)} right")
        n = len(left)
        if n == 0:
            return
        if self.channels == 2:
            frames = np.empty(2 * n, dtype=_SAMPLE)
            frames[0::2] = left
            frames[1::2] = right
        else:
            mixed = left.astype(np.int32) + right.astype(np.int32)
            frames = np.clip(mixed, -32768, 32767).astype(_SAMPLE)
        data = frames.tobytes()
        size = self._data_bytes + len(data)
        if size > _MAX_DATA:
            raise OverflowError(f"{self.path}: WAV data would pass the 4 GiB limit of the format")
        _write_all(fd, data, HEADER_SIZE + self._data_bytes)
        # Sizes after the data: a kill in between leaves the previous, still consistent, header.
        os.pwrite(fd, struct.pack("<I", HEADER_SIZE - 8 + size), _RIFF_SIZE_AT)
        os.pwrite(fd, struct.pack("<I", size), _DATA_SIZE_AT)
        self._data_bytes = size
        self.frames_written += n

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> WavSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def segment_path(path: str, segment: int) -> str:
    """``call.wav`` for segment 0, ``call.partN.wav`` for segment N."""
    if segment < 0:
        raise ValueError(f"segment must be >= 0, got {segment}")
    if segment == 0:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}.part{segment}{ext or '.wav'}"


def open_recording(path: str, samplerate: int, segment: int) -> WavSink:
    """Open segment ``segment`` of the recording at ``path`` (an `OpenRecording`), creating its
    directory. An existing file of the same name is replaced."""
    target = segment_path(path, segment)
    parent = os.path.dirname(target)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return WavSink(target, samplerate, channels=2)
