"""baresip as an independent SIP phone in tests: headless, on loopback, its microphone a WAV file
(aufile), what it hears written to WAV files by its sndfile filter. The process is always
stopped (terminate, then kill)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import wave
from pathlib import Path

import numpy as np

BARESIP = shutil.which("baresip")
MODULES = Path("/usr/lib/baresip/modules")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Baresip:
    """One baresip process with its own config directory; use ``async with``."""

    def __init__(self, home: Path, *, codecs: str = "G722/16000/1", mic_rate: int = 16000,
                 commands: tuple[str, ...] = ()) -> None:
        if BARESIP is None:
            raise RuntimeError("baresip is not installed (Debian package baresip)")
        self.home = home
        self.port = _free_udp_port()
        self.commands = commands
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""
        home.mkdir(parents=True, exist_ok=True)
        mic = home / "mic.wav"
        # A quiet microphone: 60 s of silence at the codec's rate (aufile does not resample).
        with wave.open(str(mic), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(mic_rate)
            out.writeframes(np.zeros(mic_rate * 60, dtype="<i2").tobytes())
        rtp = _free_udp_port() & ~1
        (home / "config").write_text("\n".join([
            "poll_method epoll",
            f"sip_listen 127.0.0.1:{self.port}",
            "sip_transports udp",
            "net_interface 127.0.0.1",
            f"audio_source aufile,{mic}",
            "audio_player aubridge,phone",
            "audio_alert aubridge,phone",
            f"rtp_ports {rtp}-{rtp + 20}",
            f"module_path {MODULES}",
            "module g711.so",
            "module g722.so",
            "module aufile.so",
            "module aubridge.so",
            "module sndfile.so",
            "module_app account.so",
            "module_app menu.so",
            f"snd_path {home}",
            "",
        ]))
        (home / "accounts").write_text(
            f"<sip:phone@127.0.0.1:{self.port}>;regint=0;answermode=auto;audio_codecs={codecs}\n")

    @property
    def uri(self) -> str:
        return f"sip:phone@127.0.0.1:{self.port}"

    async def __aenter__(self) -> Baresip:
        args = [BARESIP, "-f", str(self.home), "-t", "120"]
        for command in self.commands:
            args += ["-e", command]
        self.proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                         stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(4096):
            self.output += chunk

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await self._reader

    def heard(self) -> list[Path]:
        """The WAV files of what the phone decoded from the network (one per call)."""
        return sorted(self.home.glob("dump-*-dec.wav"))
