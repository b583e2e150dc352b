"""The ceiling for our API: a bare Flask app doing one INSERT and one broker publish per POST /deploy.

Served by gunicorn with the service's own settings (gunicorn.conf.py), on the same database and
broker, so that the only difference from ``web:create_app()`` is everything our API adds.
``GET /row?id=`` selects one deployment row by primary key: the baseline of the status benchmark.
"""

from __future__ import annotations

import json
import os
import uuid

from flask import Flask, jsonify, request
from sqlalchemy import create_engine, text

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS bench_bare_deployments (
    id varchar(40) PRIMARY KEY,
    project_id varchar(40) NOT NULL,
    request json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


def create_app() -> Flask:
    from bench.bare_celery import app as celery_app

    url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url, pool_size=10, max_overflow=20)
    app = Flask(__name__)

    @app.post("/deploy")
    def deploy() -> tuple[object, int]:
        body = request.get_json()
        deployment_id = f"dep_{uuid.uuid4().hex[:26]}"
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO bench_bare_deployments (id, project_id, request) VALUES (:id, :p, :r)"),
                {"id": deployment_id, "p": body["projectId"], "r": json.dumps(body)},
            )
        celery_app.send_task("bare.noop", args=(deployment_id,), retry=False)
        return jsonify(success=True, deploymentId=deployment_id, status="queued"), 202

    @app.get("/row")
    def row() -> object:
        with engine.connect() as conn:
            found = (
                conn.execute(text("SELECT * FROM deployments WHERE id = :id"), {"id": request.args["id"]})
                .mappings()
                .first()
            )
        return jsonify({k: str(v) for k, v in (found or {}).items()})

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app
