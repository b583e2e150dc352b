"""HTTP load with wrk (Debian's package; installed with apt-get when missing and allowed).

Every request is a new connection (``Connection: close``) on both sides of a comparison, as the
issue asks: keep-alive on gthread workers measures load-balancing luck. A Lua script gives each
request its own body (POST /deploy needs a project without an active deployment) or query, and
prints the latency percentiles as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT = r"""
local idx = 0
function setup(thread)
  thread:set("tindex", idx)
  idx = idx + 1
end

local items = {}
local counter = 0
local nthreads, pause_ms, method, path, template, headers

function init(args)
  for line in io.lines(args[1]) do items[#items + 1] = line end
  nthreads = tonumber(args[2])
  pause_ms = tonumber(args[3])
  method = args[4]
  path = args[5]
  local f = io.open(args[6], "r")
  template = f:read("*a")
  f:close()
  headers = {["Connection"] = "close", ["Authorization"] = "Bearer " .. args[7],
             ["Content-Type"] = "application/json"}
end

function delay()
  return pause_ms
end

function request()
  local i = ((tindex + counter * nthreads) % #items) + 1
  counter = counter + 1
  local item = items[i]
  local p = string.gsub(path, "{item}", item)
  local body = nil
  if method == "POST" then body = string.gsub(template, "{item}", item) end
  return wrk.format(method, p, headers, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %f}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class Load:
    rate: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    requests: int
    #: Answers that were not 2xx/3xx: a fault of the benchmark (say, a project reused) or the app.
    status_errors: int
    #: Connections refused, reset or timed out (10 s): what an overloaded server does.
    socket_errors: int


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and apt-get could not install it")
    return found


def run(
    url: str,
    *,
    method: str,
    path: str,
    items: list[str],
    token: str,
    body_template: str = "",
    seconds: float,
    connections: int = 16,
    threads: int = 2,
    pause_ms: float = 0.0,
) -> Load:
    """Send requests for ``seconds``; ``{item}`` in the path and body is replaced by the next item."""
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="libra-bench-wrk-") as tmp:
        script, items_file, body_file = Path(tmp, "s.lua"), Path(tmp, "items"), Path(tmp, "body")
        script.write_text(SCRIPT)
        items_file.write_text("\n".join(items) + "\n")
        body_file.write_text(body_template)
        out = subprocess.run(
            [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
             url, "--", str(items_file), str(threads), str(pause_ms), method, path, str(body_file), token],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return Load(
        rate=summary["requests"] / (summary["duration_us"] / 1e6),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        mean_ms=summary["mean_us"] / 1000,
        requests=summary["requests"],
        status_errors=summary["status_errors"],
        socket_errors=summary["socket_errors"],
    )
