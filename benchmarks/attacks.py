"""The load benchmark's two attacks on `edge-infer serve` (issue 25), both against 127.0.0.1
only, bounded in count and time:

- memory: 8 concurrent uploads of a 6320x6320 16-bit PNG (a few hundred KB that would decode to
  80 MB), then of a 4000x4000 16-bit PNG (at the 16 M pixel cap: decoded and classified); the
  server's peak and settled resident memory (/proc/PID/status, sampled every 20 ms);
- half-open: 1,100 connections that stop mid-headers or mid-body, held against a server limited
  to 1,024 open files, while a normal request is sent every 2 s: its status and seconds, the
  server's open files and how much its log grew.
"""

from __future__ import annotations

import asyncio
import io
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HOST = "127.0.0.1"
ISSUE_SIDE, CAP_SIDE = 6320, 4000
UPLOADS = 8
SETTLE_S = 3.0
SAMPLE_S = 0.02
HALF_OPEN = 1_100
OPEN_FILES = 1_024
HOLD_S = 24.0
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 10.0
UNFINISHED_HEADERS = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow"
UNFINISHED_BODY = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
                   b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n" + bytes(1000))


def sixteen_bit_png(side: int) -> bytes:
    """A side x side 16-bit grey PNG of a smooth ramp: small on the wire, big decoded."""
    ramp = (np.arange(side, dtype=np.uint32) * 65535 // (side - 1)).astype(np.uint16)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (side, side)))).save(
        out, format="PNG", compress_level=9)
    return out.getvalue()


def resident_mb(pid: int) -> float:
    """The process's resident memory (VmRSS) in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for process {pid}")


class PeakSampler:
    """The highest resident memory of `pid` seen while in the `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, resident_mb(self.pid))
            time.sleep(SAMPLE_S)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def upload_burst(url: str, pid: int, data: bytes, name: str, headers: dict) -> dict:
    """UPLOADS concurrent POST /predict of `data`: statuses, seconds, peak and settled MB."""
    before = resident_mb(pid)

    def post(_: int) -> int:
        response = httpx.post(f"{url}/predict", files={"file": (name, data, "image/png")},
                              headers=headers, timeout=120, trust_env=False)
        return response.status_code

    start = time.monotonic()
    with PeakSampler(pid) as sampler, ThreadPoolExecutor(UPLOADS) as pool:
        statuses = list(pool.map(post, range(UPLOADS)))
    seconds = time.monotonic() - start
    time.sleep(SETTLE_S)
    return {"upload_bytes": len(data), "statuses": statuses, "seconds": seconds,
            "rss_before_mb": before, "peak_rss_mb": max(sampler.peak_mb, before),
            "rss_after_mb": resident_mb(pid)}


def measure_memory(url: str, pid: int, headers: dict) -> dict:
    """The two upload bursts: the issue's 6320x6320 file, then one at the pixel cap."""
    return {f"{side}x{side}_16bit": upload_burst(url, pid, sixteen_bit_png(side),
                                                  f"ramp{side}.png", headers)
            for side in (ISSUE_SIDE, CAP_SIDE)}


def raise_own_open_files(needed: int) -> None:
    """Let this (client) process hold `needed` sockets; RuntimeError if the hard limit cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise RuntimeError(f"the client needs {needed} open files, its hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _attacker(port: int, payload: bytes, until: float) -> bool:
    """One connection that stops mid-request and waits; whether the server closed it."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return True
    try:
        writer.write(payload)
        await writer.drain()
        await asyncio.wait_for(reader.read(), max(0.0, until - time.monotonic()))
        return True
    except asyncio.TimeoutError:
        return False
    except OSError:  # reset by the server: closed too
        return True
    finally:
        writer.close()


async def _probe(url: str, data: bytes, name: str, headers: dict) -> tuple[int | str, float]:
    start = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, trust_env=False) as client:
            response = await client.post(f"{url}/predict", files={"file": (name, data)},
                                         headers=headers)
        return response.status_code, time.monotonic() - start
    except httpx.HTTPError as err:
        return type(err).__name__, time.monotonic() - start


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _half_open(url: str, pid: int, log: Path, scan: bytes, headers: dict) -> dict:
    port = int(url.rsplit(":", 1)[1])
    log_before = log.stat().st_size
    until = time.monotonic() + HOLD_S
    attackers = [asyncio.create_task(_attacker(
        port, UNFINISHED_HEADERS if i % 2 else UNFINISHED_BODY, until)) for i in range(HALF_OPEN)]
    probes, files = [], []
    while time.monotonic() < until - PROBE_TIMEOUT_S / 2:
        await asyncio.sleep(PROBE_EVERY_S if probes else 0.5)  # the first once all connect
        files.append(_open_files(pid))
        probes.append(await _probe(url, scan, "scan.png", headers))
    closed = sum(await asyncio.gather(*attackers))
    return {"connections": HALF_OPEN, "server_open_file_limit": OPEN_FILES, "hold_s": HOLD_S,
            "closed_by_server": closed, "probes": [{"status": s, "seconds": t} for s, t in probes],
            "max_probe_s": max(t for _, t in probes),
            "probes_answered": sum(s == 200 for s, _ in probes),
            "max_server_open_files": max(files),
            "log_growth_bytes": log.stat().st_size - log_before}


def measure_half_open(url: str, pid: int, log: Path, scan: bytes, headers: dict) -> dict:
    """HALF_OPEN stalled connections held for HOLD_S seconds while normal requests probe."""
    raise_own_open_files(HALF_OPEN + 256)
    return asyncio.run(_half_open(url, pid, log, scan, headers))
