"""The threaded WSGI server of the embedded default (production runs gunicorn, see gunicorn.conf.py)."""

from __future__ import annotations

import threading

from flask import Flask
from werkzeug.serving import make_server


class Server:
    def __init__(self, app: Flask, host: str, port: int) -> None:
        self._server = make_server(host, port, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(10)
