"""A real S3 server on loopback (moto's server mode, over HTTP) and what the tests read back from it."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# moto's request recorder writes to ./moto_recording unless told otherwise, when moto is imported.
os.environ.setdefault(
    "MOTO_RECORDER_FILEPATH", str(Path(tempfile.gettempdir()) / f"libra-moto-recording-{os.getpid()}")
)

# Imported after the recorder location is set.
from moto.server import ThreadedMotoServer


@dataclass
class S3Server:
    url: str
    _server: ThreadedMotoServer

    @classmethod
    def start(cls, port: int = 0) -> S3Server:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return cls(f"http://{host}:{port}", server)

    def stop(self) -> None:
        self._server.stop()

    def env(self, **extra: str) -> dict[str, str]:
        """Settings of an S3 store and target on this server, with buckets of their own."""
        suffix = uuid.uuid4().hex[:8]
        return {
            "S3_ENDPOINT_URL": self.url,
            "S3_ACCESS_KEY_ID": "test-access-key",
            "S3_SECRET_ACCESS_KEY": "test-secret-access-key",
            "S3_CREATE_BUCKETS": "1",
            "SITES_BUCKET": f"sites-{suffix}",
            "ARTIFACTS_BUCKET": f"artifacts-{suffix}",
            "LOGS_BUCKET": f"logs-{suffix}",
            **extra,
        }

    # moto's request recorder: every request the server received, as it received it.

    def start_recording(self) -> None:
        requests.post(f"{self.url}/moto-api/recorder/reset-recording", timeout=10).raise_for_status()
        requests.post(f"{self.url}/moto-api/recorder/start-recording", timeout=10).raise_for_status()

    def recorded(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/moto-api/recorder/download-recording", timeout=10)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def uploads(self, bucket: str, prefix: str = "") -> list[str]:
        """Paths of the PUTs that carried file bytes into ``bucket`` (copies inside it excluded)."""
        found = []
        for request in self.recorded():
            headers = {k.lower(): v for k, v in request["headers"].items()}
            path = request["url"].split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
            if (
                request["method"] == "PUT"
                and path.startswith(f"{bucket}/{prefix}")
                and "x-amz-copy-source" not in headers
            ):
                found.append(path)
        return found


def refused_url() -> str:
    """An http URL on loopback where nothing listens: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
