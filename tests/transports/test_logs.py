"""Log lines of processes that share one stderr (a front and its WebRTC workers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import sys, structlog
from transports.logs import configure_logging
worker = None if sys.argv[1] == "front" else int(sys.argv[1])
configure_logging("info", "json", worker=worker)
log = structlog.get_logger("t")
for i in range(int(sys.argv[2])):
    log.info("line", n=i, pad="x" * 300)
"""


def test_lines_of_processes_sharing_stderr_never_interleave_and_name_their_worker(tmp_path):
    lines_each = 2000
    with open(tmp_path / "shared.log", "w") as shared:
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, who, str(lines_each)], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=shared)
                 for who in ("front", "0", "1")]
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    records = [json.loads(line) for line in (tmp_path / "shared.log").read_text().splitlines()]
    by_worker: dict[object, list[int]] = {}
    for record in records:
        by_worker.setdefault(record.get("worker"), []).append(record["n"])
    assert {k: v for k, v in by_worker.items()} == {w: list(range(lines_each)) for w in (None, 0, 1)}
