"""`conveyor submit`, `status`, `redeliver` and `erase`: talk to a running gateway over HTTP.

They authenticate with CONVEYOR_API_KEY, else with the key `conveyor up` made in CONVEYOR_HOME.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

from conveyor.cli.local_credentials import cli_api_key

TERMINAL = {"completed", "failed", "cancelled"}


class Unauthorized(Exception):
    pass


def _raise_on_401(response: httpx.Response) -> None:
    if response.status_code == 401:
        raise Unauthorized()


def run(args: argparse.Namespace, home: Path) -> int:
    """`submit`, `status`, `redeliver` or `erase`; a gateway that cannot be reached is one line that says what to do."""
    key = cli_api_key(home)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=args.url, timeout=60, headers=headers,
                          event_hooks={"response": [_raise_on_401]}) as client:
            if args.command == "submit":
                return submit(client, args.source, user_id=args.user, callback_url=args.callback_url,
                              document_id=args.document, wait=args.wait, timeout=args.timeout)
            if args.command == "erase":
                return erase(client, args.document, wait=args.wait, timeout=args.timeout)
            if args.command == "redeliver":
                if (args.job_id is None) == (args.failed_since is None):
                    print("conveyor: name a job, or give --failed-since TIME (not both)", file=sys.stderr)
                    return 2
                if args.failed_since is not None:
                    return redeliver_failed(client, args.failed_since)
                return redeliver(client, args.job_id)
            if args.follow:
                return follow(client, args.job_id)
            return status(client, args.job_id)
    except Unauthorized:
        print("conveyor: the gateway refused the API key" if key else "conveyor: no API key", "- set CONVEYOR_API_KEY "
              "(`conveyor keys create --tenant NAME` makes one), or use the CONVEYOR_HOME of the running `conveyor up`",
              file=sys.stderr)
        return 1
    except httpx.TimeoutException:
        print(f"conveyor: the gateway at {args.url} did not answer in time; try again, or see its log",
              file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"conveyor: cannot reach the gateway at {args.url} ({type(exc).__name__}). Is `conveyor up` running? "
              "Give its address with --url or CONVEYOR_GATEWAY_URL.", file=sys.stderr)
        return 1


def submit(client: httpx.Client, source: str, *, user_id: str, callback_url: str | None, wait: bool,
           timeout: float, document_id: str | None = None) -> int:
    optional = {name: value for name, value in (("callback_url", callback_url), ("document_id", document_id)) if value}
    if source == "-":
        response = client.post("/submit", json={"user_id": user_id, "content": sys.stdin.read(), **optional})
    else:
        path = Path(source)
        if not path.is_file():
            print(f"error: no such file: {source}", file=sys.stderr)
            return 2
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        form = {"user_id": user_id, **optional}
        with path.open("rb") as handle:
            response = client.post("/upload", data=form, files={"file": (path.name, handle, content_type)})
    if response.status_code != 202:
        print(f"error: gateway answered {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    accepted = response.json()
    print(accepted["job_id"])
    if not wait:
        return 0
    return _wait_for(client, accepted["job_id"], timeout)


def _wait_for(client: httpx.Client, job_id: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        progress = ", ".join(f"{name}={s['state']}" for name, s in job["stages"].items())
        if progress != last:
            print(f"  {job['status']}: {progress or 'queued'}", file=sys.stderr)
            if job.get("waiting_for"):
                print(f"  waiting for {job['waiting_for']} (unavailable since {job['waiting_since']}); "
                      "it resumes on its own", file=sys.stderr)
            last = progress
        if job["status"] in TERMINAL:
            return _outcome(job)
        time.sleep(0.5)
    print(f"timed out after {timeout:.0f}s waiting for {job_id}", file=sys.stderr)
    return 3


def follow(client: httpx.Client, job_id: str) -> int:
    """Print the job's stage changes from its event stream until it ends; exit as `submit --wait`."""
    final: dict | None = None
    with client.stream("GET", f"/jobs/{job_id}/events", timeout=httpx.Timeout(60, read=None)) as response:
        if response.status_code != 200:
            response.read()
            print(f"no job {job_id}" if response.status_code == 404 else
                  f"error: gateway answered {response.status_code}: {response.text}", file=sys.stderr)
            return 1
        for event, data in _server_sent_events(response.iter_lines()):
            if event == "status":
                progress = ", ".join(f"{name}={s['state']}" for name, s in data["stages"].items())
                print(f"  {data['status']}: {progress or 'queued'}", file=sys.stderr)
            elif event == "stage":
                waiting = f" (waiting for {data['waiting_for']})" if data.get("waiting_for") else ""
                print(f"  {data['stage']}: {data['state']}, attempt {data['attempts']}{waiting}", file=sys.stderr)
            elif event == "job":
                print(f"  job {data['status']}", file=sys.stderr)
            elif event == "end":
                final = data
    if final is None:  # the stream ended first (its time limit): where the job stands now
        return _wait_for(client, job_id, timeout=float("inf"))
    return _outcome(final)


def _server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def _outcome(job: dict) -> int:
    if job["status"] == "completed":
        print(f"document {job['erases']} erased" if job.get("erases") else job["summary"])
        return 0
    print("job cancelled" if job["status"] == "cancelled" else f"job failed: {job['error']}", file=sys.stderr)
    return 1


def status(client: httpx.Client, job_id: str) -> int:
    response = client.get(f"/jobs/{job_id}")
    if response.status_code == 404:
        print(f"no job {job_id}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


def erase(client: httpx.Client, document_id: str, *, wait: bool, timeout: float) -> int:
    response = client.delete(f"/documents/{quote(document_id, safe='/')}")
    if response.status_code != 202:
        print(f"conveyor: {response.json().get('detail', response.text)}", file=sys.stderr)
        return 1
    erasure = response.json()
    print(erasure["job_id"])
    print(f"erasing document {document_id} ({erasure['versions']} version(s)); follow it with "
          f"`conveyor status {erasure['job_id']}`", file=sys.stderr)
    return _wait_for(client, erasure["job_id"], timeout) if wait else 0


def redeliver(client: httpx.Client, job_id: str) -> int:
    response = client.post(f"/jobs/{job_id}/redeliver")
    if response.status_code != 202:
        print(f"conveyor: {response.json().get('detail', response.text)}", file=sys.stderr)
        return 1
    print(f"webhook of job {job_id} scheduled to be sent again now")
    return 0


def redeliver_failed(client: httpx.Client, since: str) -> int:
    scheduled, before = 0, None
    while True:  # one request schedules at most 10,000: go on from where it stopped
        response = client.post("/jobs/redeliver", json={"state": "failed", "since": since, "before": before})
        if response.status_code != 202:
            errors = response.json().get("errors") or [{}]
            print(f"conveyor: {errors[0].get('msg') or response.json().get('detail', response.text)}", file=sys.stderr)
            return 1
        scheduled += response.json()["scheduled"]
        before = response.json()["next"]
        if before is None:
            break
    print(f"webhooks of {scheduled} job(s) that failed since {since} scheduled to be sent again now")
    return 0
