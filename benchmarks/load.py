"""`python -m busi load`: a bounded load test of the web app.

Starts `edge-infer serve` on a free 127.0.0.1 port in a child process, asks it about each BUSI
test image once (one request at a time), then sends a fixed number of POST /predict requests
from concurrent clients, counts errors and answers that differ from the single-request answer
for the same image, stops the server and writes load.json and load.md. The whole run has a hard
time limit. Needs the [serve] extra and httpx (both in [dev]).
"""

from __future__ import annotations

import asyncio
import json
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Union

import click
import httpx
import numpy as np

from benchmarks import attacks
from benchmarks.cli import DEFAULT_OUT
from benchmarks.latency import child_env
from benchmarks.machine import command_line, machine_info
from edge_infer.splits import split_files
from edge_infer.web.guard import TOKEN_ENV
from train.datasets import resolve_busi_dir

SCHEMA_VERSION = 1
HOST = "127.0.0.1"  # the only address this test ever talks to
JSON_NAME = "load.json"
MARKDOWN_NAME = "load.md"
PERCENTILES = (50, 95, 99)
MAX_REQUESTS, MAX_CLIENTS = 10_000, 64
STOP_SECONDS = 10.0
EXAMPLES = 5  # error and mismatch messages kept in the report

Answer = Union[dict, str]  # the JSON of a 200 answer, or what went wrong


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log: IO[str], deadline: float,
                   token: str | None = None) -> dict:
    """The server's /healthz answer; RuntimeError with its log if it exits or the deadline
    passes first."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.monotonic() < deadline and server.poll() is None:
        try:
            response = httpx.get(f"{url}/healthz", timeout=1.0, trust_env=False,
                                 headers=headers)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    log.seek(0)
    raise RuntimeError(f"the server did not answer /healthz:\n{log.read()[-3000:]}")


@dataclass
class Server:
    """A running `edge-infer serve`: base URL, /healthz answer, arguments, log file, pid."""

    url: str
    health: dict
    args: list[str]
    log: Path
    pid: int


def _limit_open_files(limit: int | None) -> Callable[[], None] | None:
    """A preexec_fn that sets the child's open-file limit (as `ulimit -n` would), or None."""
    if limit is None:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@contextmanager
def served(model: str, workers: int, threads: int, deadline: float,
           extra_args: tuple[str, ...] = (), open_files: int | None = None,
           env: dict[str, str] | None = None) -> Iterator[Server]:
    """`edge-infer serve` on a free loopback port (with `extra_args`, at most `open_files`
    open files), once /healthz answers. The server is stopped on the way out."""
    port = free_port()
    args = ["serve", "--host", HOST, "--port", str(port), "--model", model,
            "--threads", str(threads), "--workers", str(workers), *extra_args]
    with tempfile.TemporaryDirectory() as folder, open(Path(folder) / "server.log", "w+") as log:
        server = subprocess.Popen([sys.executable, "-c", "from edge_infer.cli import main; main()",
                                   *args], stdout=log, stderr=subprocess.STDOUT,
                                  env={**child_env(), **(env or {})},
                                  preexec_fn=_limit_open_files(open_files))
        try:
            url = f"http://{HOST}:{port}"
            health = _wait_until_up(url, server, log, deadline, (env or {}).get(TOKEN_ENV))
            yield Server(url, health, args, Path(log.name), server.pid)
        finally:
            server.terminate()
            try:
                server.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


async def _post(client: httpx.AsyncClient, name: str, data: bytes) -> tuple[float, Answer]:
    """Seconds for one POST /predict and its answer."""
    start = time.perf_counter()
    try:
        response = await client.post("/predict", files={"file": (name, data, "image/png")})
    except httpx.HTTPError as err:
        return time.perf_counter() - start, f"{name}: {type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    if response.status_code != 200:
        return seconds, f"{name}: HTTP {response.status_code}: {response.text[:200]}"
    return seconds, response.json()


def latency_ms(seconds: list[float]) -> dict:
    """p50/p95/p99, mean and max in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    stats = {f"p{q}": float(np.percentile(ms, q)) for q in PERCENTILES}
    return {**stats, "mean": float(ms.mean()), "max": float(ms.max())}


async def _measure(url: str, uploads: list[tuple[str, bytes]], requests: int, clients: int,
                   timeout_s: float) -> dict:
    """Each image once, one at a time; then `requests` requests (cycling through the images)
    from `clients` concurrent clients, each answer compared with that image's single answer."""
    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=url, timeout=timeout_s, trust_env=False)

    async with client() as alone:
        singles = [await _post(alone, name, data) for name, data in uploads]
    problems = [answer for _, answer in singles if isinstance(answer, str)]
    errors, mismatches, seconds = len(problems), 0, []
    todo = iter(range(requests))

    async def one_client() -> None:
        nonlocal errors, mismatches
        async with client() as mine:
            for i in todo:  # shared: each request index is taken by exactly one client
                name, data = uploads[i % len(uploads)]
                took, answer = await _post(mine, name, data)
                seconds.append(took)
                if isinstance(answer, str):
                    errors += 1
                    problems.append(answer)
                elif answer != singles[i % len(uploads)][1]:
                    mismatches += 1
                    problems.append(f"{name}: differs from its single-request answer")

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    duration = time.perf_counter() - start
    return {"errors": errors, "mismatches": mismatches, "examples": problems[:EXAMPLES],
            "duration_s": duration, "requests_per_s": requests / duration,
            "latency_ms": latency_ms(seconds),
            "single_latency_ms": latency_ms([took for took, _ in singles])}


def run_attacks(model: str, workers: int, threads: int, scan: bytes, deadline: float) -> dict:
    """The memory and half-open attacks (benchmarks/attacks.py), each on a fresh server (the
    second limited to OPEN_FILES open files); with the targets and whether each was met."""
    with served(model, workers, threads, deadline) as server:
        memory = attacks.measure_memory(server.url, server.pid, {})
    with served(model, workers, threads, deadline, open_files=attacks.OPEN_FILES) as server:
        half_open = attacks.measure_half_open(server.url, server.pid, server.log, scan, {})
    issue = memory[f"{attacks.ISSUE_SIDE}x{attacks.ISSUE_SIDE}_16bit"]
    targets = {  # the issue's, on its 6320x6320 file; the at-cap burst is measured, no target
        "peak_rss_mb_at_most_400": issue["peak_rss_mb"] <= 400,
        "rss_after_mb_at_most_250": issue["rss_after_mb"] <= 250,
        "issue_uploads_refused_422": issue["statuses"] == [422] * attacks.UPLOADS,
        "every_probe_answered_within_5_s": half_open["probes_answered"]
        == len(half_open["probes"]) and half_open["max_probe_s"] <= 5.0,
        "log_growth_under_1_mb": half_open["log_growth_bytes"] < 1e6,
    }
    return {"memory": memory, "half_open": half_open, "targets": targets}


def run_load(root: Path, requests: int = 200, clients: int = 8, workers: int = 2,
             threads: int = 1, model: str = "int8", timeout_s: float = 300.0,
             command: str = "", with_attacks: bool = False) -> dict:
    """Serve, measure and stop the server within `timeout_s` seconds (else TimeoutError);
    the results (the content of load.json); `with_attacks` adds run_attacks'."""
    deadline = time.monotonic() + timeout_s
    rows = split_files("test")[:requests]
    uploads = [(Path(row.file).name, (root / row.file).read_bytes()) for row in rows]
    machine = machine_info()
    with served(model, workers, threads, deadline) as server:
        url, health, args = server.url, server.health, server.args
        try:
            measured = asyncio.run(asyncio.wait_for(
                _measure(url, uploads, requests, clients, timeout_s), deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise TimeoutError(f"the load test took over {timeout_s:g} s and was stopped") from None
    attacked = (run_attacks(model, workers, threads, uploads[0][1], deadline)
                if with_attacks else None)
    machine["load_average_at_end"] = machine_info()["load_average_1_5_15"]
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "server": {"command": shlex.join(["edge-infer", *args]), "model": health["model"],
                   "workers": health["workers"], "threads": threads},
        "requests": requests,
        "clients": clients,
        "images": len(uploads),
        "timeout_s": timeout_s,
        **measured,
        "passed": measured["errors"] == 0 and measured["mismatches"] == 0
        and (attacked is None or all(attacked["targets"].values())),
        **({"attacks": attacked} if attacked else {}),
        "machine": machine,
    }


def attack_lines(attacked: dict) -> list[str]:
    """The report's section on the two attacks (benchmarks/attacks.py)."""
    memory, half = attacked["memory"], attacked["half_open"]
    lines = ["## Attacks (issue 25)", "",
             f"Memory: {attacks.UPLOADS} concurrent uploads of one 16-bit PNG to a fresh server "
             "(resident memory of the server process, sampled every 20 ms; after = "
             f"{attacks.SETTLE_S:g} s after the last answer). The issue's targets (peak "
             "<= 400 MB with 2 workers, <= 250 MB after) apply to its 6320x6320 file; the "
             "burst at the pixel cap is the worst accepted case, measured without a target "
             "(its peak varies by tens of MB between runs on this shared machine).", "",
             "| Upload | Bytes | Answers | Before (MB) | Peak (MB) | After (MB) |",
             "|---|---|---|---|---|---|"]
    for name, m in memory.items():
        answers = ", ".join(f"{n}× {s}" for s, n in sorted(
            {s: m["statuses"].count(s) for s in m["statuses"]}.items()))
        lines.append(f"| {name} | {m['upload_bytes']:,} | {answers} | "
                     f"{m['rss_before_mb']:.0f} | {m['peak_rss_mb']:.0f} | "
                     f"{m['rss_after_mb']:.0f} |")
    probes = ", ".join(f"{p['status']} in {p['seconds']:.2f} s" for p in half["probes"])
    lines += ["", f"Half-open: {half['connections']:,} connections stopping mid-headers or "
              f"mid-body, held for {half['hold_s']:g} s against a server limited to "
              f"{half['server_open_file_limit']:,} open files; {half['closed_by_server']:,} "
              f"closed by the server meanwhile; at most {half['max_server_open_files']} files "
              f"open in the server; its log grew {half['log_growth_bytes']:,} bytes. A normal "
              f"request every {attacks.PROBE_EVERY_S:g} s: {probes}.", "",
              "Targets: " + "; ".join(f"{name} {'met' if ok else 'MISSED'}"
                                      for name, ok in attacked["targets"].items()) + ".", ""]
    return lines


def _loads(values: list[float] | None) -> str:
    return "—" if values is None else " / ".join(f"{v:.2f}" for v in values)


def write_report(results: dict, out: Path) -> tuple[Path, Path]:
    """load.json (everything) and load.md (one table) in `out`; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / JSON_NAME, out / MARKDOWN_NAME
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    server, ms, machine = results["server"], results["latency_ms"], results["machine"]
    lines = [
        "# Web app load test", "",
        f"`{results['command']}` ({results['created']}) against `{server['command']}` "
        f"({server['model']}).", "",
        "| Requests | Clients | Workers × threads | Errors | Differing answers | Requests/s "
        "| p50 (ms) | p95 (ms) | p99 (ms) |",
        "|" + "---|" * 9,
        f"| {results['requests']} | {results['clients']} | {server['workers']} × "
        f"{server['threads']} | {results['errors']} | {results['mismatches']} | "
        f"{results['requests_per_s']:.1f} | {ms['p50']:.0f} | {ms['p95']:.0f} | "
        f"{ms['p99']:.0f} |", "",
        f"Requests cycle through {results['images']} BUSI test-split images; each answer (the "
        "whole JSON: prediction, probabilities, flags) is compared with the answer to the same "
        "image sent alone first (those single requests: p50 "
        f"{results['single_latency_ms']['p50']:.0f} ms).", "",
        f"Machine: {machine['cpu']}, {machine['cores_logical']} logical cores, shared by the "
        f"server and the clients; load average (1 / 5 / 15 min) "
        f"{_loads(machine['load_average_1_5_15'])} at the start, "
        f"{_loads(machine['load_average_at_end'])} at the end.", "",
    ]
    if results["examples"]:
        lines += ["Problems (first few):", "", *(f"- {p}" for p in results["examples"]), ""]
    if "attacks" in results:
        lines += attack_lines(results["attacks"])
    md_path.write_text("\n".join(lines))
    return json_path, md_path


@click.command(help=__doc__)
@click.option("--requests", type=click.IntRange(1, MAX_REQUESTS), default=200,
              show_default=True, help="POST /predict requests under load.")
@click.option("--clients", type=click.IntRange(1, MAX_CLIENTS), default=8, show_default=True,
              help="Concurrent clients.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Server classifiers (one interpreter each).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="Interpreter threads per worker.")
@click.option("--model", default="int8", show_default=True, help="Model the server loads.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=300.0,
              show_default=True, help="Hard limit in seconds for the whole run.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help=f"Folder for {JSON_NAME} and {MARKDOWN_NAME}.")
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--attacks/--no-attacks", "with_attacks", default=True, show_default=True,
              help="Also run the memory and half-open attacks (benchmarks/attacks.py, ~2 min).")
def main(requests: int, clients: int, workers: int, threads: int, model: str,
         timeout_s: float, out: Path, busi_dir: str | None, with_attacks: bool) -> None:
    """Run the load test and write the report; exit 1 on any error or differing answer."""
    command = command_line("load")
    try:
        results = run_load(resolve_busi_dir(busi_dir), requests, clients, workers, threads,
                           model, timeout_s, command, with_attacks)
    except (OSError, RuntimeError) as err:  # includes FileNotFoundError and TimeoutError
        raise click.ClickException(str(err)) from None
    json_path, md_path = write_report(results, out)
    ms = results["latency_ms"]
    click.echo(f"{results['requests_per_s']:.1f} requests/s, p50 {ms['p50']:.0f} ms, p95 "
               f"{ms['p95']:.0f} ms, p99 {ms['p99']:.0f} ms; wrote {md_path} and {json_path}",
               err=True)
    if not results["passed"]:
        missed = [n for n, ok in results.get("attacks", {}).get("targets", {}).items() if not ok]
        raise click.ClickException(f"{results['errors']} errors and {results['mismatches']} "
                                   "answers differing from the single-request answers"
                                   + (f"; targets missed: {', '.join(missed)}" if missed else ""))


if __name__ == "__main__":
    main()
