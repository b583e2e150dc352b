"""A fake Cloudflare API on loopback: the Pages Direct Upload, domain and DNS endpoints, strictly checked.

It answers in Cloudflare's envelope and refuses what the real API would refuse: an account call
without the API token, an asset call without a valid (issued, unexpired) upload JWT or with the API
token instead, an upload that is not base64 or whose key is not a Pages hash, and a deployment whose
manifest names a hash never uploaded or whose hash does not match the uploaded bytes (recomputed
here from the bytes and the path's extension, independently of the adapter). Tests read what it
received and can make the next calls fail with a status of their choice.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import blake3

ACCOUNT = "acct0123456789abcdef0123456789ab"
TOKEN = "cf-test-api-token-0123456789"
ZONE = "zone0123456789abcdef0123456789ab"
ZONE_NAME = "example.io"
_HASH = re.compile(r"^[0-9a-f]{32}$")


def expected_hash(content: bytes, path: str) -> str:
    """The Pages hash, written from wrangler's hash.ts and checked against its test vectors."""
    base = path.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    extension = "" if dot <= 0 or base == ".." else base[dot + 1 :]
    return blake3.blake3((base64.b64encode(content).decode() + extension).encode()).hexdigest()[:32]


@dataclass
class FakeCloudflare:
    jwt_ttl_s: float = 3600
    #: Upload JWTs to issue already revoked (their claims still say they are valid).
    revoked_tokens: int = 0
    #: Deploy stage polls before a new deployment reports success.
    polls_until_deployed: int = 1
    assets: dict[str, bytes] = field(default_factory=dict)
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    domains: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    dns_records: list[dict[str, Any]] = field(default_factory=list)
    jwts: dict[str, float] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _failures: list[tuple[str, int, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FakeCloudflare:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload, headers = fake.handle(self.command, self.path, dict(self.headers), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/client/v4"

    def fail_next(self, path_part: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests whose path contains ``path_part`` with ``status``."""
        with self._lock:
            self._failures.append((path_part, status, times))

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.requests if m == method and path_part in p)

    # Requests ---------------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        url = urlsplit(raw_path)
        path = url.path.removeprefix("/client/v4")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append((method, path))
            for index, (part, status, times) in enumerate(self._failures):
                if part in path:
                    if times <= 1:
                        self._failures.pop(index)
                    else:
                        self._failures[index] = (part, status, times - 1)
                    return status, _error(status * 10, "injected failure"), {"Retry-After": "0"}
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        bearer = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if path.startswith("/pages/assets/"):
            if bearer == TOKEN:
                return self._problem(401, 10000, "asset calls take the upload JWT, not the API token")
            expires = self.jwts.get(bearer or "")
            if expires is None or expires < time.time():
                return 401, _error(8000013, "Authorization failed: invalid or expired JWT"), {}
            return self._assets(path, json.loads(body or b"null"))
        if bearer != TOKEN:
            return 403, _error(10000, "Authentication error"), {}
        if path.startswith(f"/accounts/{ACCOUNT}/pages/projects"):
            return self._pages(
                method, path.removeprefix(f"/accounts/{ACCOUNT}/pages/projects"), headers, body
            )
        if path.startswith(f"/zones/{ZONE}"):
            return self._zones(method, path.removeprefix(f"/zones/{ZONE}"), query, body)
        return 404, _error(7003, f"no route for {method} {path}"), {}

    def _problem(self, status: int, code: int, message: str) -> tuple[int, Any, dict[str, str]]:
        self.problems.append(message)
        return status, _error(code, message), {}

    def _assets(self, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        if path == "/pages/assets/check-missing":
            return 200, _ok([h for h in body["hashes"] if h not in self.assets]), {}
        if path == "/pages/assets/upload":
            for item in body:
                if not _HASH.match(item.get("key", "")) or item.get("base64") is not True:
                    return self._problem(400, 8000096, f"bad upload item {item.get('key')}")
                if not item.get("metadata", {}).get("contentType"):
                    return self._problem(400, 8000096, "an upload without contentType")
                self.assets[item["key"]] = base64.b64decode(item["value"], validate=True)
                self.uploaded.append(item["key"])
            return 200, _ok(None), {}
        if path == "/pages/assets/upsert-hashes":
            unknown = [h for h in body["hashes"] if h not in self.assets]
            if unknown:
                return self._problem(400, 8000096, f"upsert of hashes never uploaded: {unknown}")
            return 200, _ok(None), {}
        return 404, _error(7003, "no such asset route"), {}

    def _pages(
        self, method: str, rest: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if rest == "" and method == "POST":
            spec = json.loads(body)
            name = spec["name"]
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,56}[a-z0-9]", name):
                return self._problem(400, 8000011, f"invalid project name {name!r}")
            self.projects[name] = {
                "name": name,
                "subdomain": f"{name}.pages.dev",
                "production_branch": spec["production_branch"],
                "canonical_deployment": None,
            }
            return 200, _ok(self.projects[name]), {}
        parts = rest.strip("/").split("/")
        project = self.projects.get(parts[0])
        if project is None:
            return 404, _error(8000007, "Project not found"), {}
        if len(parts) == 1 and method == "GET":
            return 200, _ok(project), {}
        if parts[1:] == ["upload-token"]:
            claims = {
                "exp": int(time.time() + self.jwt_ttl_s),
                "max_file_count_allowed": 20000,
                "p": parts[0],
            }
            payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
            jwt = f"eyJhbGciOiJIUzI1NiJ9.{payload}.{uuid.uuid4().hex}"
            revoked = self.revoked_tokens > 0
            self.revoked_tokens -= 1
            self.jwts[jwt] = 0 if revoked else time.time() + self.jwt_ttl_s
            return 200, _ok({"jwt": jwt}), {}
        if parts[1] == "deployments":
            return self._deployments(method, project, parts[2:], headers, body)
        if parts[1] == "domains":
            if method == "POST":
                name = json.loads(body)["name"]
                domain = {
                    "name": name,
                    "status": "pending",
                    "validation_data": {"method": "http", "status": "pending"},
                }
                self.domains[(project["name"], name)] = domain
                return 200, _ok(domain), {}
            domain = self.domains.get((project["name"], parts[2]))
            if domain is None:
                return 404, _error(8000009, "Domain not found"), {}
            return 200, _ok(domain), {}
        return 404, _error(7003, "no such pages route"), {}

    def _deployments(
        self, method: str, project: dict[str, Any], rest: list[str], headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if not rest and method == "POST":
            content_type = next(v for k, v in headers.items() if k.lower() == "content-type")
            if not content_type.startswith("multipart/form-data"):
                return self._problem(400, 8000096, "the deployment must be multipart/form-data")
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + body
            )
            fields = {
                part.get_param("name", header="content-disposition"): part for part in message.iter_parts()
            }
            manifest = json.loads(fields["manifest"].get_content())
            for special in ("_headers", "_redirects"):
                # wrangler sends each as a file part named after itself, outside the manifest.
                if special in fields and fields[special].get_filename() != special:
                    return self._problem(400, 8000096, f"{special} must be a file part named {special}")
                if "/" + special in manifest:
                    return self._problem(400, 8000096, f"{special} belongs in its own part, not the manifest")
            for path, digest in manifest.items():
                if digest not in self.assets:
                    return self._problem(400, 8000096, f"manifest names {path} -> {digest}, never uploaded")
                if expected_hash(self.assets[digest], path) != digest:
                    return self._problem(
                        400, 8000096, f"the hash of {path} does not match its uploaded bytes"
                    )
            deployment_id = str(uuid.uuid4())
            short = deployment_id[:8]
            deployment = {
                "id": deployment_id,
                "short_id": short,
                "url": f"https://{short}.{project['subdomain']}",
                "environment": "production",
                "latest_stage": {"name": "queued", "status": "active"},
                "manifest": manifest,
                "parts": {
                    name: part.get_payload(decode=True)
                    for name, part in fields.items()
                    if part.get_filename() is not None
                },
                "branch": fields["branch"].get_content() if "branch" in fields else None,
                "commit_message": fields["commit_message"].get_content()
                if "commit_message" in fields
                else None,
                "polls": 0,
            }
            self.deployments[deployment_id] = deployment
            if deployment["branch"] in (None, project["production_branch"]):
                project["canonical_deployment"] = {"id": deployment_id}
            return 200, _ok(_public(deployment)), {}
        deployment = self.deployments.get(rest[0]) if rest else None
        if deployment is None:
            return 404, _error(8000009, "Deployment not found"), {}
        if len(rest) == 1 and method == "GET":
            deployment["polls"] += 1
            if deployment["polls"] >= self.polls_until_deployed:
                deployment["latest_stage"] = {"name": "deploy", "status": "success"}
            return 200, _ok(_public(deployment)), {}
        if len(rest) == 1 and method == "DELETE":
            del self.deployments[rest[0]]
            return 200, _ok(None), {}
        if rest[1:] == ["rollback"] and method == "POST":
            project["canonical_deployment"] = {"id": deployment["id"]}
            return 200, _ok(_public(deployment)), {}
        return 404, _error(7003, "no such deployment route"), {}

    def _zones(
        self, method: str, rest: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if rest == "" and method == "GET":
            return 200, _ok({"id": ZONE, "name": ZONE_NAME}), {}
        if rest == "/dns_records" and method == "GET":
            found = [
                r
                for r in self.dns_records
                if r["name"] == query.get("name") and r["type"] == query.get("type")
            ]
            return 200, _ok(found), {}
        if rest == "/dns_records" and method == "POST":
            record = {"id": uuid.uuid4().hex, **json.loads(body)}
            self.dns_records.append(record)
            return 200, _ok(record), {}
        return 404, _error(7003, "no such zone route"), {}


def _public(deployment: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in deployment.items() if k not in ("manifest", "parts", "polls")}


def _ok(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def _error(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}
