"""DeployTarget on Cloudflare Pages, through the Direct Upload API exactly as ``wrangler pages deploy``.

Publishing a deployment:

0. the Pages project (CLOUDFLARE_PAGES_PROJECT_PREFIX + the project id) is created when missing;
1. an upload JWT is fetched for it (and fetched again when it expires or is refused);
2. every file's Pages hash is computed as wrangler does (BLAKE3 of base64 contents + extension);
3. ``check-missing`` names the hashes Cloudflare lacks, and only those are uploaded, in buckets of
   at most 40 MiB and 2,000 files; ``upsert-hashes`` then refreshes the rest;
4. the deployment is created with the manifest (``_headers`` and ``_redirects`` as their own parts)
   and polled until its deploy stage succeeds.

Account calls carry the API token, asset calls the upload JWT. Every call is retried on 429 and 5xx
answers and on lost connections (requests + tenacity), honouring Retry-After.

Cloudflare serves the project's production deployment at ``<project>.pages.dev``: publishing creates
a production deployment, and activating an older one rolls Pages back to it. The service itself
serves every target under /sites/ through its own pointer: the deployment records (our manifest, the
Pages deployment id and URL) and the pointer live in the service's object store under
``targets/cloudflare-pages/<project>/``, and the files are read from the store's content-addressed
blobs, which the build step put there.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import blake3
import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from libra_deploy import registry, sites
from libra_deploy.adapters._live_pointers import LivePointers
from libra_deploy.config import Settings
from libra_deploy.errors import ProviderError, provider_error
from libra_deploy.ports import DomainStatus, Manifest, ObjectNotFound, ObjectStore, PublishResult, SiteFile
from libra_deploy.redact import register_secrets

PROVIDER = "Cloudflare Pages"
#: Our project and deployment ids (anything else in a /sites/ URL names nothing).
_ID = re.compile(r"^[a-z]{2,5}_[0-9a-z]{26}$")
PRODUCTION_BRANCH = "main"
MAX_ASSET_BYTES = 25 * 1024 * 1024
MAX_ASSET_COUNT_DEFAULT = 20_000
MAX_BUCKET_BYTES = 40 * 1024 * 1024
MAX_BUCKET_FILES = 2_000
#: Files the Pages asset upload leaves out (wrangler's ignore list); _headers and _redirects go to
#: the deployment as parts of their own.
ROOT_IGNORED = frozenset({"_worker.js", "_redirects", "_headers", "_routes.json", "functions", ".wrangler"})
ANYWHERE_IGNORED = frozenset({".DS_Store", "node_modules", ".git"})
SPECIAL_PARTS = ("_headers", "_redirects")
# Cloudflare API error codes wrangler relies on.
PROJECT_NOT_FOUND = 8000007
JWT_UNAUTHORIZED = 8000013
#: How long to wait for a new deployment's deploy stage to finish.
DEPLOY_WAIT_S = 120.0


def node_extname(name: str) -> str:
    """Node's ``path.extname`` (with its dot), which wrangler's hash depends on.

    ``os.path.splitext`` differs for names with several leading dots, so it is not used.
    """
    base = name.rsplit("/", 1)[-1]
    if base == "..":
        return ""
    dot = base.rfind(".")
    return "" if dot <= 0 else base[dot:]


def pages_hash(content: bytes, name: str) -> str:
    """wrangler's asset hash: hex(BLAKE3(base64(contents) + extension without its dot))[:32]."""
    encoded = base64.b64encode(content).decode("ascii") + node_extname(name)[1:]
    return blake3.blake3(encoded.encode("utf-8")).hexdigest()[:32]


def pages_project_name(prefix: str, project_id: str) -> str:
    """A valid Pages project name ([a-z0-9-], at most 58 characters) for one of our projects."""
    return (prefix + project_id.replace("_", "-")).lower()[:58].strip("-")


class CloudflareError(Exception):
    def __init__(self, status: int | None, codes: list[int], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


class CloudflareApi:
    """The few Cloudflare API calls Pages needs, with retries and both kinds of credentials."""

    def __init__(
        self,
        base_url: str,
        account_id: str,
        api_token: str,
        *,
        attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        self._token = api_token
        register_secrets([api_token])
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "libra-deploy"

    def account(self, path: str) -> str:
        return f"/accounts/{self.account_id}{path}"

    def _wait(self, state: RetryCallState) -> float:
        # Cloudflare's Retry-After wins; otherwise 1, 2, 4... times the base, at most 30 s.
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        return min(30.0, self._backoff_s * 2 ** (state.attempt_number - 1))

    def call(
        self,
        method: str,
        path: str,
        *,
        jwt: str | None = None,
        json_body: Any = None,
        files: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """Send one request (retried on 429, 5xx and lost connections) and return its ``result``."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            return retrying(self._send, method, path, jwt, json_body, files, params)
        except _Retryable as exc:
            raise exc.error from None

    def _send(
        self,
        method: str,
        path: str,
        jwt: str | None,
        json_body: Any,
        files: Any,
        params: dict[str, str] | None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {jwt or self._token}"}
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                headers=headers,
                json=json_body,
                files=files,
                params=params,
                timeout=self._timeout_s,
            )
        except requests.RequestException as exc:
            raise _Retryable(CloudflareError(None, [], f"{type(exc).__name__}: {exc}"), None) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.ok and body.get("success", False):
            return body.get("result")
        errors = body.get("errors") or []
        codes = [int(e.get("code", 0)) for e in errors if isinstance(e, dict)]
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
        error = CloudflareError(response.status_code, codes, text or response.reason or "no details")
        if error.retryable:
            retry_after = response.headers.get("Retry-After", "")
            # ASCII digits only: str.isdigit() also takes "²", which float() refuses.
            raise _Retryable(
                error, float(retry_after) if retry_after.isascii() and retry_after.isdigit() else None
            )
        raise error


class _Retryable(Exception):
    def __init__(self, error: CloudflareError, retry_after: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Asset:
    path: str
    sha256: str
    hash: str
    size: int
    content_type: str


class _UploadToken:
    """The upload JWT of one Pages project, fetched again when it expires or is refused."""

    def __init__(self, api: CloudflareApi, project: str) -> None:
        self._api = api
        self._project = project
        self.jwt = ""
        self.claims: dict[str, Any] = {}

    def refresh(self) -> None:
        result = self._api.call("GET", self._api.account(f"/pages/projects/{self._project}/upload-token"))
        self.jwt = str(result["jwt"])
        try:
            payload = self.jwt.split(".")[1]
            self.claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError):
            self.claims = {}

    def get(self) -> str:
        expires = self.claims.get("exp")
        if not self.jwt or (isinstance(expires, int | float) and expires <= time.time() + 30):
            self.refresh()
        return self.jwt

    def call(self, path: str, body: Any) -> Any:
        try:
            return self._api.call("POST", path, jwt=self.get(), json_body=body)
        except CloudflareError as exc:
            if JWT_UNAUTHORIZED not in exc.codes and exc.status != 401:
                raise
        self.refresh()
        return self._api.call("POST", path, jwt=self.jwt, json_body=body)


class CloudflarePagesTarget:
    name = "cloudflare-pages"

    def __init__(
        self,
        api: CloudflareApi,
        records: ObjectStore,
        *,
        project_prefix: str = "libra-",
        zone_id: str = "",
        deploy_wait_s: float = DEPLOY_WAIT_S,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.api = api
        self.records = records
        self.project_prefix = project_prefix
        self.zone_id = zone_id
        self.deploy_wait_s = deploy_wait_s
        self.poll_interval_s = poll_interval_s
        self._live = LivePointers()
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> CloudflarePagesTarget:
        settings.require_adapter("DEPLOY_TARGET", "cloudflare-pages")
        api = CloudflareApi(
            settings.cloudflare_api_base_url, settings.cloudflare_account_id, settings.cloudflare_api_token
        )
        return cls(
            api,
            registry.object_store(settings),
            project_prefix=settings.cloudflare_pages_project_prefix,
            zone_id=settings.cloudflare_zone_id,
        )

    # Helpers ------------------------------------------------------------------------------------------

    def _call(self, action: str, operation: Callable[[], Any], *, creating: bool = False) -> Any:
        try:
            return operation()
        except CloudflareError as exc:
            raise provider_error(
                PROVIDER, action, exc.message, status=exc.status, creating=creating
            ) from None

    def _project(self, project_id: str) -> str:
        return pages_project_name(self.project_prefix, project_id)

    @staticmethod
    def _record_key(project_id: str, deployment_id: str) -> str:
        return f"targets/cloudflare-pages/{project_id}/{deployment_id}.json"

    @staticmethod
    def _pointer_key(project_id: str) -> str:
        return f"targets/cloudflare-pages/{project_id}/live"

    def _record(self, project_id: str, deployment_id: str) -> dict[str, Any] | None:
        if not _ID.match(project_id) or not _ID.match(deployment_id):
            return None
        key = (project_id, deployment_id)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            record = cast(
                dict[str, Any], json.loads(self.records.get(self._record_key(project_id, deployment_id)))
            )
        except (ObjectNotFound, ValueError):
            return None
        with self._lock:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = record
        return record

    def ensure_project(self, project_id: str) -> dict[str, Any]:
        """The Pages project of ``project_id``, created as a Direct Upload project when missing."""
        name = self._project(project_id)
        try:
            return cast(dict[str, Any], self.api.call("GET", self.api.account(f"/pages/projects/{name}")))
        except CloudflareError as exc:
            if PROJECT_NOT_FOUND not in exc.codes and exc.status != 404:
                raise provider_error(
                    PROVIDER, f"read project {name}", exc.message, status=exc.status
                ) from None
        return cast(
            dict[str, Any],
            self._call(
                f"create project {name}",
                lambda: self.api.call(
                    "POST",
                    self.api.account("/pages/projects"),
                    json_body={"name": name, "production_branch": PRODUCTION_BRANCH},
                ),
                creating=True,
            ),
        )

    # DeployTarget -----------------------------------------------------------------------------------

    def publish(
        self, project_id: str, deployment_id: str, manifest: Manifest, store: ObjectStore
    ) -> PublishResult:
        done = self._record(project_id, deployment_id)
        if done is not None:
            return PublishResult(uploaded_files=0, uploaded_bytes=0, url=done.get("url"))
        name = self._project(project_id)
        self.ensure_project(project_id)
        token = _UploadToken(self.api, name)
        self._call("get an upload token", token.refresh)

        assets: list[_Asset] = []
        parts: dict[str, bytes] = {}
        for path, entry in sorted(manifest.items()):
            sha = str(entry["sha256"])
            if path in SPECIAL_PARTS:
                parts[path] = store.get(f"blobs/{sha}")
                continue
            segments = path.split("/")
            if segments[0] in ROOT_IGNORED or ANYWHERE_IGNORED.intersection(segments):
                continue
            if int(entry["size"]) > MAX_ASSET_BYTES:
                raise ProviderError(f"{path} is larger than the 25 MiB Cloudflare Pages allows for one file")
            data = store.get(f"blobs/{sha}")
            content_type = sites.content_type(path).split(";")[0]
            assets.append(_Asset(path, sha, pages_hash(data, path), len(data), content_type))
        limit = int(token.claims.get("max_file_count_allowed") or MAX_ASSET_COUNT_DEFAULT)
        if len(assets) > limit:
            raise ProviderError(
                f"the site has {len(assets)} files; this Cloudflare Pages project allows {limit}"
            )

        hashes = sorted({a.hash for a in assets})
        missing = set(
            self._call(
                "check missing files", lambda: token.call("/pages/assets/check-missing", {"hashes": hashes})
            )
            or []
        )
        to_upload = {a.hash: a for a in assets if a.hash in missing}
        uploaded_bytes = 0
        for bucket in _buckets(list(to_upload.values())):
            payload = []
            for asset in bucket:
                data = store.get(f"blobs/{asset.sha256}")
                uploaded_bytes += len(data)
                payload.append(
                    {
                        "key": asset.hash,
                        "value": base64.b64encode(data).decode("ascii"),
                        "metadata": {"contentType": asset.content_type},
                        "base64": True,
                    }
                )
            self._call(f"upload {len(payload)} files", partial(token.call, "/pages/assets/upload", payload))
        # A cache hint to Cloudflare that these hashes are still used; wrangler only warns on failure.
        with contextlib.suppress(CloudflareError):
            token.call("/pages/assets/upsert-hashes", {"hashes": hashes})

        pages_manifest = {"/" + a.path: a.hash for a in assets}
        form: list[tuple[str, Any]] = [
            ("manifest", (None, json.dumps(pages_manifest))),
            ("branch", (None, PRODUCTION_BRANCH)),
            ("commit_message", (None, f"libra-deploy {deployment_id}")),
            ("commit_dirty", (None, "true")),
        ]
        form.extend((part, (part, data)) for part, data in parts.items())
        created = self._call(
            "create the deployment",
            lambda: self.api.call(
                "POST", self.api.account(f"/pages/projects/{name}/deployments"), files=form
            ),
        )
        deployment = self._wait_deployed(name, str(created["id"]))
        url = str(deployment.get("url") or created.get("url") or "")
        record = {
            "pagesProject": name,
            "pagesDeploymentId": str(created["id"]),
            "url": url,
            "manifest": manifest,
        }
        self.records.put(
            self._record_key(project_id, deployment_id),
            json.dumps(record).encode(),
            content_type="application/json",
        )
        return PublishResult(uploaded_files=len(to_upload), uploaded_bytes=uploaded_bytes, url=url or None)

    def _wait_deployed(self, name: str, pages_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.deploy_wait_s
        path = self.api.account(f"/pages/projects/{name}/deployments/{pages_id}")
        delay = self.poll_interval_s
        while True:
            deployment = cast(
                dict[str, Any], self._call("read the deployment", lambda: self.api.call("GET", path))
            )
            stage = deployment.get("latest_stage") or {}
            if stage.get("name") == "deploy" and stage.get("status") == "success":
                return deployment
            if stage.get("status") in ("failure", "canceled"):
                where = f"{stage.get('name')} with {stage.get('status')}"
                raise ProviderError(
                    f"{PROVIDER}: deployment {pages_id} ended in {where}",
                    code="PROVIDER_DEPLOY_FAILED",
                )
            if time.monotonic() + delay > deadline:
                raise ProviderError(
                    f"{PROVIDER}: deployment {pages_id} did not deploy within {self.deploy_wait_s:.0f} s",
                    code="PROVIDER_TIMEOUT",
                    retryable=True,
                )
            time.sleep(delay)
            delay = min(delay * 2, 8.0)

    def activate(self, project_id: str, deployment_id: str) -> None:
        record = self._record(project_id, deployment_id)
        if record is None:
            raise ProviderError(f"deployment {deployment_id} was never published")
        name = str(record["pagesProject"])
        project = self.ensure_project(project_id)
        canonical = (project.get("canonical_deployment") or {}).get("id")
        if canonical != record["pagesDeploymentId"]:
            # Publishing made each deployment the production one; an older one comes back by rollback.
            self._call(
                "roll back to the deployment",
                lambda: self.api.call(
                    "POST",
                    self.api.account(
                        f"/pages/projects/{name}/deployments/{record['pagesDeploymentId']}/rollback"
                    ),
                ),
            )
        self.records.put(self._pointer_key(project_id), deployment_id.encode(), content_type="text/plain")
        self._live.remember(project_id, deployment_id)

    def live_deployment(self, project_id: str) -> str | None:
        if not _ID.match(project_id):
            return None
        return self._live.get(project_id, lambda: self._read_pointer(project_id))

    def _read_pointer(self, project_id: str) -> str | None:
        try:
            return self.records.get(self._pointer_key(project_id)).decode().strip() or None
        except (ObjectNotFound, ValueError):
            return None

    def open(self, project_id: str, deployment_id: str, path: str) -> SiteFile | None:
        record = self._record(project_id, deployment_id)
        entry = (record or {}).get("manifest", {}).get(path)
        if entry is None:
            return None
        key = f"blobs/{entry['sha256']}"
        return SiteFile(
            path=path,
            sha256=str(entry["sha256"]),
            size=int(entry["size"]),
            open=lambda: io.BytesIO(self.records.get(key)),
        )

    def remove(self, project_id: str, deployment_id: str) -> None:
        """Delete the Pages deployment and our record of it. Assets shared with others stay."""
        record = self._record(project_id, deployment_id)
        if record is not None:
            path = self.api.account(
                f"/pages/projects/{record['pagesProject']}/deployments/{record['pagesDeploymentId']}"
            )
            try:
                self.api.call("DELETE", path, params={"force": "true"})
            except CloudflareError as exc:
                if exc.status != 404:
                    raise provider_error(
                        PROVIDER, "delete the deployment", exc.message, status=exc.status
                    ) from None
        self.records.delete(self._record_key(project_id, deployment_id))
        with self._lock:
            self._cache.pop((project_id, deployment_id), None)

    # Custom domains ----------------------------------------------------------------------------------

    def attach_domain(self, project_id: str, domain: str) -> DomainStatus:
        """Attach ``domain`` to the Pages project, create its CNAME when our zone holds it, report status."""
        project = self.ensure_project(project_id)
        name = str(project["name"])
        path = self.api.account(f"/pages/projects/{name}/domains")
        try:
            attached = cast(dict[str, Any], self.api.call("GET", f"{path}/{domain}"))
        except CloudflareError as exc:
            if exc.status != 404:
                raise provider_error(
                    PROVIDER, f"read domain {domain}", exc.message, status=exc.status
                ) from None
            attached = cast(
                dict[str, Any],
                self._call(
                    f"attach domain {domain}",
                    lambda: self.api.call("POST", path, json_body={"name": domain}),
                    creating=True,
                ),
            )
        subdomain = str(project.get("subdomain") or f"{name}.pages.dev")
        dns = self._ensure_cname(domain, subdomain)
        return _domain_status(attached, domain, subdomain, dns)

    def _ensure_cname(self, domain: str, subdomain: str) -> str:
        if not self.zone_id:
            return ""
        zone = cast(
            dict[str, Any],
            self._call("read the DNS zone", lambda: self.api.call("GET", f"/zones/{self.zone_id}")),
        )
        zone_name = str(zone.get("name", "")).lower()
        if not zone_name or not (domain == zone_name or domain.endswith("." + zone_name)):
            return ""
        records_path = f"/zones/{self.zone_id}/dns_records"
        existing = self._call(
            "read DNS records",
            lambda: self.api.call("GET", records_path, params={"type": "CNAME", "name": domain}),
        )
        if existing:
            return f"CNAME {domain} exists in zone {zone_name}"
        self._call(
            "create the CNAME record",
            lambda: self.api.call(
                "POST",
                records_path,
                json_body={"type": "CNAME", "name": domain, "content": subdomain, "proxied": True, "ttl": 1},
            ),
        )
        return f"created CNAME {domain} -> {subdomain} in zone {zone_name}"


def _domain_status(attached: dict[str, Any], domain: str, subdomain: str, dns: str) -> DomainStatus:
    status = str(attached.get("status", "pending"))
    validation = attached.get("validation_data") or {}
    notes = [dns] if dns else []
    if status == "active":
        return DomainStatus("active", "; ".join(notes))
    if status in ("error", "blocked", "deactivated"):
        notes.append(str(validation.get("error_message") or f"Cloudflare reports the domain {status}"))
        return DomainStatus("error", "; ".join(notes))
    if validation.get("method") == "txt" and validation.get("txt_name"):
        notes.append(f"add TXT {validation['txt_name']} = {validation.get('txt_value', '')}")
    elif not dns:
        notes.append(f"point CNAME {domain} at {subdomain}")
    return DomainStatus("pending", "; ".join(notes))


def _buckets(assets: list[_Asset]) -> list[list[_Asset]]:
    """Group uploads as wrangler does: largest first, each bucket at most 40 MiB and 2,000 files."""
    buckets: list[list[_Asset]] = []
    sizes: list[int] = []
    for asset in sorted(assets, key=lambda a: a.size, reverse=True):
        for index, bucket in enumerate(buckets):
            if sizes[index] + asset.size <= MAX_BUCKET_BYTES and len(bucket) < MAX_BUCKET_FILES:
                bucket.append(asset)
                sizes[index] += asset.size
                break
        else:
            buckets.append([asset])
            sizes.append(asset.size)
    return buckets
