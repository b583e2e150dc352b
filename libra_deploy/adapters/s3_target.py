"""DeployTarget on any S3 API (Cloudflare R2, AWS S3, MinIO): a bucket that a CDN or the service serves.

Layout in SITES_BUCKET::

    sites/<project>/<owner>/<path>                    the files, never changed once written
    sites/<project>/_deployments/<id>.json            a deployment's manifest {path: {"sha256", "size"}},
                                                      written once its files are there; its metadata
                                                      ``owner`` names the deployment whose prefix holds
                                                      them when that is another one
    sites/<project>/_deployments/<owner>.sharers/<id> empty: the share record of <id>, which serves
                                                      <owner>'s files
    sites/<project>/live                              the id of the deployment the site serves

A deployment whose content differs from the live one's keeps its own prefix, so a bucket served as it
is (SITES_PUBLIC_URL) gives every deployment an immutable URL. A file the live deployment already
has is copied inside the bucket (CopyObject: no bytes leave the service); only content the project
never published is uploaded. Activating is one write of the ``live`` object, and the service's
/sites/ serves through it.

A deployment whose manifest is identical to the live one's (the same files, hence the same
``_headers`` and ``_redirects`` translation) writes no file at all: it shares the files of their
owner, the live deployment or the one the live deployment shares (never a chain), and its URL is the
owner's prefix, the same content just as immutable. Copying would cost one CopyObject per file, and
an unchanged redeploy is held to 0.2 x the first deploy (bench/redeploy): sharing costs the manifest
and one share record. The share record is bookkeeping, kept with the manifests, and named after the
owner so that removing a deployment needs one list by prefix to know whether the files are still
served: an owner with sharers loses only its manifest (its own id no longer serves), and the last
sharer of a removed owner takes the files with it. A manifest without ``owner`` (every one written
before sharing) owns its own prefix.

A bucket cannot run the site's ``_headers`` and ``_redirects`` rules (the service's /sites/ applies
them in full); what maps onto objects is translated when publishing, the rest is named in a warning
of the deployment's log:

* a header rule's Content-Type, Cache-Control, Content-Disposition, Content-Language and
  Content-Encoding become the metadata of every object it matches (an ``index.html`` answers for
  its directory's URL too); other headers, and rules for other hosts, cannot be carried;
* a static redirect with status 301 or 308 becomes a redirect object (``WebsiteRedirectLocation``,
  which S3 website endpoints answer with 301; a path of the site points into the deployment's own
  prefix); a rule whose source is a file puts the redirect on that file's object, since rules come
  before files. Temporary redirects (302, 303, 307: S3 would make them permanent), rewrites (200)
  and rules with splats or placeholders cannot be. Cloudflare R2 serves objects without website
  redirects, so there only the headers apply.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError

from libra_deploy import site_rules, sites
from libra_deploy.adapters._live_pointers import LivePointers
from libra_deploy.adapters._s3 import NOT_FOUND, ensure_bucket, error_code, make_client, s3_error
from libra_deploy.config import Settings
from libra_deploy.errors import ProviderError
from libra_deploy.ports import Manifest, ObjectStore, PublishResult, SiteFile

_ID = re.compile(r"^[a-z]{2,5}_[0-9a-z]{26}$")
#: The response headers an object's metadata sets, by lower-case name: the put_object parameter.
OBJECT_HEADERS = {
    "content-type": "ContentType",
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-language": "ContentLanguage",
    "content-encoding": "ContentEncoding",
}
#: Redirect statuses a redirect object can stand for: S3 answers every one with 301.
PERMANENT_REDIRECTS = frozenset({301, 308})
#: Rule sources named in one warning, at most.
SHOWN_SOURCES = 5
#: Parallel uploads and copies while publishing.
CONCURRENCY = 8

T = TypeVar("T")


class _Missing(Exception):
    """The object asked for does not exist."""


@dataclass(frozen=True)
class _Published:
    """A published deployment, as its manifest object records it."""

    manifest: Manifest
    #: The deployment whose prefix holds the files: this one, or the one whose files it shares.
    owner: str


@dataclass
class ObjectRules:
    """A deployment's ``_headers`` and ``_redirects`` as its objects can carry them."""

    #: Object parameters (headers, a redirect) of the files the rules touch, by path.
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Redirect objects where the site has no file: path -> WebsiteRedirectLocation.
    redirects: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def params(self, path: str) -> dict[str, str]:
        """The headers and redirect of one file's object."""
        return self.files[path] if path in self.files else _default_headers(path)


def _default_headers(path: str) -> dict[str, str]:
    return {"ContentType": sites.content_type(path), "CacheControl": sites.cache_control(path)}


def _answered_urls(path: str) -> list[str]:
    """The URLs a file's object answers: its own, and its directory's for an index.html."""
    urls = ["/" + path]
    if path == "index.html" or path.endswith("/index.html"):
        urls.append("/" + path.removesuffix("index.html"))
    return urls


def _listed(sources: list[str]) -> str:
    shown = ", ".join(sources[:SHOWN_SOURCES])
    return shown + (f" and {len(sources) - SHOWN_SOURCES} more" if len(sources) > SHOWN_SOURCES else "")


def translate_rules(rules: site_rules.SiteRules, paths: Iterable[str], prefix: str) -> ObjectRules:
    """Map the site's rules onto the objects of a deployment published under ``prefix``."""
    translated = ObjectRules()
    uncarried: dict[str, str] = {}  # lower-case header name -> its spelling
    for path in paths:
        actions = []
        for rule in rules.headers:
            if rule.pattern.host is not None:
                continue
            params = next(
                (p for u in _answered_urls(path) if (p := rule.pattern.match("", u)) is not None), None
            )
            if params is not None:
                values = tuple((name, site_rules.substitute(value, params)) for name, value in rule.set)
                actions.append(site_rules.HeaderAction(set=values, unset=rule.unset))
        if not actions:
            continue
        base = [("Content-Type", sites.content_type(path)), ("Cache-Control", sites.cache_control(path))]
        object_params = {}
        for name, value in site_rules.apply_headers(base, actions):
            param = OBJECT_HEADERS.get(name.lower())
            if param is None or not value.isascii():
                uncarried.setdefault(name.lower(), name)
            else:
                object_params[param] = value
        translated.files[path] = object_params
    if uncarried:
        translated.warnings.append(
            f"_headers: {', '.join(sorted(uncarried.values()))} cannot be set on S3 objects (only "
            "Content-Type, Cache-Control, Content-Disposition, Content-Language and Content-Encoding, "
            "in ASCII); the service's /sites/ applies them"
        )
    other_hosts = [f"line {rule.line}" for rule in rules.headers if rule.pattern.host is not None]
    if other_hosts:
        translated.warnings.append(
            f"_headers: rules for absolute URLs ({_listed(other_hosts)}) are not translated for S3"
        )
    _translate_redirects(rules, set(paths), prefix, translated)
    return translated


def _translate_redirects(
    rules: site_rules.SiteRules, paths: set[str], prefix: str, translated: ObjectRules
) -> None:
    dynamic, rewrites, temporary = [], [], []
    for rule in rules.redirects:
        source = rule.source.text
        if rule.source.dynamic:
            dynamic.append(source)
        elif rule.status == 200:
            rewrites.append(source)
        elif rule.status not in PERMANENT_REDIRECTS:
            temporary.append(f"{source} ({rule.status})")
        else:
            destination = rule.destination
            if destination.startswith("/"):
                destination = f"/{prefix}{destination.removeprefix('/')}"
            key = source.removeprefix("/")
            if not key or key.endswith("/"):
                key += "index.html"
            if key in paths:
                translated.files[key] = {**translated.params(key), "WebsiteRedirectLocation": destination}
            else:
                translated.redirects[key] = destination
    if dynamic:
        translated.warnings.append(
            f"_redirects: rules with splats or placeholders ({_listed(dynamic)}) cannot be S3 redirect "
            "objects"
        )
    if rewrites:
        translated.warnings.append(
            f"_redirects: rewrites (200) of {_listed(rewrites)} cannot be served by S3"
        )
    if temporary:
        translated.warnings.append(
            f"_redirects: temporary redirects of {_listed(temporary)} are not translated (an S3 redirect "
            "object always answers 301, which browsers remember)"
        )


class S3Target:
    name = "s3"

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        public_url: str = "",
        create_bucket: bool = False,
        region: str = "auto",
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.public_url = public_url.rstrip("/")
        self._create_bucket = create_bucket
        self._region = region
        self._ready = False
        self._manifests: dict[tuple[str, str], _Published] = {}
        self._live = LivePointers()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Target:
        settings.require_adapter("DEPLOY_TARGET", "s3")
        target = cls(
            make_client(settings),
            settings.sites_bucket,
            public_url=settings.sites_public_url,
            create_bucket=settings.s3_create_buckets,
            region=settings.s3_region,
        )
        try:
            target.check_bucket()
        except ProviderError as exc:
            # Unreachable at start-up: checked again before the first operation, which fails
            # (retryably) for as long as the endpoint does not answer.
            if not exc.retryable:
                raise
        return target

    def check_bucket(self) -> None:
        """Make sure SITES_BUCKET exists (creating it when allowed); done once per process."""
        with self._lock:
            if self._ready:
                return
            ensure_bucket(
                self._client, self.bucket, "SITES_BUCKET", create=self._create_bucket, region=self._region
            )
            self._ready = True

    # Keys -----------------------------------------------------------------------------------------

    @staticmethod
    def _prefix(project_id: str, deployment_id: str) -> str:
        if not _ID.match(project_id) or not _ID.match(deployment_id):
            raise ValueError(f"invalid project or deployment id {project_id!r}/{deployment_id!r}")
        return f"sites/{project_id}/{deployment_id}/"

    @staticmethod
    def _manifest_key(project_id: str, deployment_id: str) -> str:
        return f"sites/{project_id}/_deployments/{deployment_id}.json"

    @staticmethod
    def _sharers_prefix(project_id: str, owner_id: str) -> str:
        """Where the deployments sharing ``owner_id``'s files are recorded: one list answers who they are."""
        return f"sites/{project_id}/_deployments/{owner_id}.sharers/"

    @classmethod
    def _share_key(cls, project_id: str, owner_id: str, deployment_id: str) -> str:
        return cls._sharers_prefix(project_id, owner_id) + deployment_id

    @staticmethod
    def _pointer_key(project_id: str) -> str:
        return f"sites/{project_id}/live"

    def _call(self, action: str, method: Callable[..., T], **params: Any) -> T:
        try:
            return method(**params)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                raise _Missing(params.get("Key", "")) from None
            raise s3_error(action, exc, self.bucket) from exc
        except BotoCoreError as exc:
            raise s3_error(action, exc, self.bucket) from exc

    def _list(self, prefix: str) -> set[str]:
        def collect() -> set[str]:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return {str(item["Key"]) for page in pages for item in page.get("Contents", ())}

        return self._call(f"list {prefix}", collect)

    # DeployTarget -----------------------------------------------------------------------------------

    def publish(
        self, project_id: str, deployment_id: str, manifest: Manifest, store: ObjectStore
    ) -> PublishResult:
        self.check_bucket()
        prefix = self._prefix(project_id, deployment_id)
        live = self.live_deployment(project_id)
        current = self._published(project_id, live) if live else None
        # The live deployment's owner is this one when its own publish is retried after activating:
        # its files are all there already.
        if current is not None and current.manifest == manifest and current.owner != deployment_id:
            return self._share(project_id, deployment_id, manifest, store, current.owner)
        rules = self._object_rules(manifest, store, prefix)
        # A retried publish finds what its first attempt wrote; a deployment's files never change.
        present = self._list(prefix)
        sources: dict[str, str] = {}
        if current is not None:
            owner_prefix = self._prefix(project_id, current.owner)
            sources = {str(e["sha256"]): owner_prefix + path for path, e in current.manifest.items()}
        uploads: dict[str, str] = {}  # content never published by the project: sha -> first path
        copies: list[str] = []
        for path, entry in sorted(manifest.items()):
            if prefix + path in present:
                continue
            sha = str(entry["sha256"])
            if sha in sources or sha in uploads:
                copies.append(path)
            else:
                uploads[sha] = path

        def upload(path: str) -> int:
            data = store.get(f"blobs/{manifest[path]['sha256']}")
            self._put(prefix + path, data, manifest[path]["sha256"], rules.params(path))
            return len(data)

        def redirect(path: str) -> None:
            self._call(
                f"write the redirect {path}",
                self._client.put_object,
                Bucket=self.bucket,
                Key=prefix + path,
                Body=b"",
                ContentType="text/html; charset=utf-8",
                WebsiteRedirectLocation=rules.redirects[path],
            )

        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            uploaded_bytes = sum(pool.map(upload, uploads.values()))
            for sha, path in uploads.items():
                sources.setdefault(sha, prefix + path)
            list(pool.map(lambda path: self._copy(sources, prefix, path, manifest, store, rules), copies))
            list(pool.map(redirect, sorted(p for p in rules.redirects if prefix + p not in present)))
        self._write_manifest(project_id, deployment_id, manifest)
        return PublishResult(
            uploaded_files=len(uploads),
            uploaded_bytes=uploaded_bytes,
            url=self._url(prefix, manifest),
            warnings=tuple(rules.warnings),
        )

    def _share(
        self, project_id: str, deployment_id: str, manifest: Manifest, store: ObjectStore, owner: str
    ) -> PublishResult:
        """Publish a deployment identical to the live one: it serves the files of their owner."""
        owner_prefix = self._prefix(project_id, owner)
        # Translated for the warnings only: the owner's objects carry the very same rules.
        rules = self._object_rules(manifest, store, owner_prefix)
        # The manifest names the owner before the share record exists, so that a publish interrupted
        # in between leaves nothing remove() cannot find. Meanwhile the live deployment (the owner, or
        # a sharer with its own record) keeps the files, and this one cannot go live before its
        # publish has returned.
        self._write_manifest(project_id, deployment_id, manifest, owner=owner)
        self._call(
            "record the share",
            self._client.put_object,
            Bucket=self.bucket,
            Key=self._share_key(project_id, owner, deployment_id),
            Body=b"",
        )
        return PublishResult(
            uploaded_files=0,
            uploaded_bytes=0,
            url=self._url(owner_prefix, manifest),
            warnings=tuple(rules.warnings),
        )

    def _write_manifest(
        self, project_id: str, deployment_id: str, manifest: Manifest, *, owner: str | None = None
    ) -> None:
        """A deployment is published once its manifest is there (``activate`` checks it)."""
        self._call(
            "write manifest",
            self._client.put_object,
            Bucket=self.bucket,
            Key=self._manifest_key(project_id, deployment_id),
            Body=json.dumps(manifest, sort_keys=True).encode(),
            ContentType="application/json",
            Metadata={"owner": owner} if owner else {},
        )

    def _url(self, prefix: str, manifest: Manifest) -> str | None:
        if not self.public_url:
            return None
        return f"{self.public_url}/{prefix}" + ("index.html" if "index.html" in manifest else "")

    @staticmethod
    def _object_rules(manifest: Manifest, store: ObjectStore, prefix: str) -> ObjectRules:
        texts = {
            name: site_rules.decode(store.get(f"blobs/{manifest[name]['sha256']}"))
            for name in site_rules.RULE_FILES
            if name in manifest
        }
        if not texts:
            return ObjectRules()
        rules = site_rules.parse(texts.get(site_rules.REDIRECTS), texts.get(site_rules.HEADERS))
        return translate_rules(rules, manifest.keys(), prefix)

    def _put(self, key: str, data: bytes, sha: str, params: dict[str, str]) -> None:
        self._call(
            f"upload {key}",
            self._client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            Metadata={"sha256": sha},
            **params,
        )

    def _copy(
        self,
        sources: dict[str, str],
        prefix: str,
        path: str,
        manifest: Manifest,
        store: ObjectStore,
        rules: ObjectRules,
    ) -> None:
        sha = str(manifest[path]["sha256"])
        try:
            self._call(
                f"copy {path}",
                self._client.copy_object,
                Bucket=self.bucket,
                Key=prefix + path,
                CopySource={"Bucket": self.bucket, "Key": sources[sha]},
                MetadataDirective="REPLACE",
                Metadata={"sha256": sha},
                **rules.params(path),
            )
        except _Missing:
            # The source went away (an old deployment removed meanwhile): upload it after all.
            self._put(prefix + path, store.get(f"blobs/{sha}"), sha, rules.params(path))

    def activate(self, project_id: str, deployment_id: str) -> None:
        self.check_bucket()
        if not self._has_manifest(project_id, deployment_id):
            raise ProviderError(f"deployment {deployment_id} was never published")
        self._call(
            "switch the live deployment",
            self._client.put_object,
            Bucket=self.bucket,
            Key=self._pointer_key(project_id),
            Body=deployment_id.encode(),
            ContentType="text/plain",
            CacheControl="no-cache",
        )
        self._live.remember(project_id, deployment_id)

    def live_deployment(self, project_id: str) -> str | None:
        if not _ID.match(project_id):
            return None
        return self._live.get(project_id, lambda: self._read_pointer(project_id))

    def _read_pointer(self, project_id: str) -> str | None:
        self.check_bucket()
        try:
            response = self._call(
                "read the live deployment",
                self._client.get_object,
                Bucket=self.bucket,
                Key=self._pointer_key(project_id),
            )
            with response["Body"] as body:
                return body.read().decode().strip() or None
        except _Missing:
            return None

    def _has_manifest(self, project_id: str, deployment_id: str) -> bool:
        """Whether the deployment's manifest is in the bucket now (the cache is not asked)."""
        try:
            self._call(
                "check manifest",
                self._client.head_object,
                Bucket=self.bucket,
                Key=self._manifest_key(project_id, deployment_id),
            )
        except _Missing:
            return False
        return True

    def _published(self, project_id: str, deployment_id: str) -> _Published | None:
        key = (project_id, deployment_id)
        with self._lock:
            cached = self._manifests.get(key)
        if cached is not None:
            return cached
        if not _ID.match(project_id) or not _ID.match(deployment_id):
            return None
        self.check_bucket()
        try:
            response = self._call(
                "read manifest",
                self._client.get_object,
                Bucket=self.bucket,
                Key=self._manifest_key(project_id, deployment_id),
            )
            with response["Body"] as body:
                manifest = cast(Manifest, json.loads(body.read()))
        except _Missing:
            return None
        # No owner in the metadata (every manifest written before sharing): it owns its prefix.
        published = _Published(manifest, response.get("Metadata", {}).get("owner") or deployment_id)
        with self._lock:
            if len(self._manifests) > 256:
                self._manifests.clear()
            self._manifests[key] = published
        return published

    def open(self, project_id: str, deployment_id: str, path: str) -> SiteFile | None:
        published = self._published(project_id, deployment_id)
        if published is None or (entry := published.manifest.get(path)) is None:
            return None
        key = self._prefix(project_id, published.owner) + path
        return SiteFile(
            path=path, sha256=str(entry["sha256"]), size=int(entry["size"]), open=partial(self._open, key)
        )

    def _open(self, key: str) -> BinaryIO:
        try:
            response = self._call("read a file", self._client.get_object, Bucket=self.bucket, Key=key)
        except _Missing:
            raise ProviderError(f"S3: {key} is listed in its manifest but missing from the bucket") from None
        return cast(BinaryIO, response["Body"])

    def remove(self, project_id: str, deployment_id: str) -> None:
        """Delete a deployment's manifest, and the files it serves once no other deployment does.

        An owner whose files are shared keeps them and loses only its manifest; the last sharer of an
        owner removed before takes the files with it. Removing never races a new share of the same
        files: a deployment only shares the files of the LIVE deployment's owner, and the pipeline
        never publishes while the live deployment could be removed (gc never removes the live
        deployment, and rollback and promote are refused while a deployment is active), so the live
        deployment (the owner itself, or a sharer with its record) keeps them all that time. Nor
        does it race another removal: two of one project (an owner and its last sharer, each
        seeing the other) would both keep the files, but the caller removes one project's
        deployments one at a time (see DeployTarget.remove).
        """
        self.check_bucket()
        published = self._published(project_id, deployment_id)
        # Removed already, or never published completely: whatever is left is under its own prefix.
        owner = published.owner if published else deployment_id
        own_record = self._share_key(project_id, owner, deployment_id)
        others = self._list(self._sharers_prefix(project_id, owner)) - {own_record}
        # The files go with the last deployment that serves them: no other sharer, and their owner is
        # this deployment or was removed before.
        last = not others and (owner == deployment_id or not self._has_manifest(project_id, owner))
        keys = sorted(self._list(self._prefix(project_id, owner))) if last else []
        if owner != deployment_id:
            keys.append(own_record)
        self._delete(keys)
        # The manifest goes last: until it is gone, a retried remove still finds the owner it names.
        self._delete([self._manifest_key(project_id, deployment_id)])
        with self._lock:
            self._manifests.pop((project_id, deployment_id), None)

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            response = self._call(
                "remove a deployment",
                self._client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise ProviderError(
                    f"S3: could not delete {first.get('Key')}: {first.get('Code')}", retryable=True
                )
