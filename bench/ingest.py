"""Ingest: POST /submit requests/s and latency with durable acks, against a no-op FastAPI endpoint.

Both servers run as one uvicorn process each; wrk (Debian package) drives them from another
process over loopback with the same 2 KB JSON body and the same Authorization header (the
gateway checks the API key, its tenant's rate and quota; the limits are set high enough not to
refuse any request, so what is measured is the accepting path).

    python bench/ingest.py --seconds 10 --connections 32
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from documents import english_text  # noqa: E402

from conveyor.cli.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from conveyor.credentials import add_key  # noqa: E402

HERE = Path(__file__).resolve().parent


def wait_until_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def run_wrk(url: str, body_file: Path, seconds: int, connections: int, key: str) -> dict[str, float]:
    script = body_file.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        f'local f = io.open("{body_file}", "r")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    latency = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", output).group(1)) for p in ("50", "99")}
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return {"rate": rate, "p50": latency["50"], "p99": latency["99"], "non2xx": int(errors.group(1)) if errors else 0}


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.json"
        body.write_text(json.dumps({"user_id": "bench", "content": english_text(seed=1)[:2000]}))
        noop_port, gateway_port = free_port(), free_port()
        key, _ = add_key(Path(tmp) / "api-keys.json", "bench")
        env = {**os.environ, "CONVEYOR_BOOTSTRAP_SERVERS": broker.bootstrap, "CONVEYOR_HOME": tmp,
               "CONVEYOR_GATEWAY_PORT": str(gateway_port), "CONVEYOR_LOG_LEVEL": "WARNING",
               "CONVEYOR_TENANT_REQUESTS_PER_SECOND": "1000000", "CONVEYOR_TENANT_MAX_ACTIVE_JOBS": "1000000000"}
        servers = [
            subprocess.Popen([sys.executable, "-m", "uvicorn", "noop_app:app", "--port", str(noop_port),
                              "--log-level", "warning", "--no-access-log"], cwd=HERE),
            subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", "gateway"], env=env),
        ]
        try:
            wait_until_up(f"http://127.0.0.1:{noop_port}/docs")
            wait_until_up(f"http://127.0.0.1:{gateway_port}/healthz")
            print(f"wrk: {args.connections} connections, {args.seconds}s, 2 KB JSON", file=sys.stderr)
            results = {
                "no-op FastAPI endpoint (baseline)": run_wrk(f"http://127.0.0.1:{noop_port}/submit", body,
                                                             args.seconds, args.connections, key),
                "conveyor POST /submit (acks=all)": run_wrk(f"http://127.0.0.1:{gateway_port}/submit", body,
                                                             args.seconds, args.connections, key),
            }
        finally:
            for server in servers:
                server.terminate()
                server.wait()
    print("| endpoint                            |    req/s | p50 (ms) | p99 (ms) | non-2xx |")
    print("|-------------------------------------|----------|----------|----------|---------|")
    for name, r in results.items():
        print(f"| {name:<35} | {r['rate']:8.0f} | {r['p50']:8.1f} | {r['p99']:8.1f} | {r['non2xx']:7d} |")
    base, ours = results.values()
    print(f"\nconveyor / no-op rate: {ours['rate'] / base['rate']:.2f} (goal >= 0.85); "
          f"p99: {ours['p99'] / base['p99']:.1f}x the no-op's (goal <= 2)")


if __name__ == "__main__":
    main()
