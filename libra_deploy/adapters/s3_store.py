"""ObjectStore on any S3 API through boto3: Cloudflare R2 (endpoint + region ``auto``), AWS S3, MinIO.

Two buckets, as the original service had them: keys under ``logs/`` live in LOGS_BUCKET, everything
else (source blobs, build caches, artifacts) in ARTIFACTS_BUCKET; both may be the same bucket.

The buckets are checked when the store is built. A missing one is created when S3_CREATE_BUCKETS=1
and is otherwise a configuration error naming it; an endpoint that does not answer at start-up is
not fatal (a worker must be able to start while the store is briefly away): the check is done again
before the first operation, which then fails with a retryable error for as long as it does not
answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from libra_deploy.adapters._s3 import NOT_FOUND, ensure_bucket, error_code, make_client, s3_error
from libra_deploy.config import Settings
from libra_deploy.errors import ProviderError
from libra_deploy.ports import ObjectNotFound

LOGS_PREFIX = "logs/"
#: Parallel HEAD requests when checking which of many keys are missing.
CHECK_CONCURRENCY = 8


class S3ObjectStore:
    def __init__(
        self, client: Any, *, artifacts_bucket: str, logs_bucket: str, create_buckets: bool, region: str
    ) -> None:
        self._client = client
        self.artifacts_bucket = artifacts_bucket
        self.logs_bucket = logs_bucket
        self._create_buckets = create_buckets
        self._region = region
        self._ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ObjectStore:
        settings.require_adapter("OBJECT_STORE", "s3")
        store = cls(
            make_client(settings),
            artifacts_bucket=settings.artifacts_bucket,
            logs_bucket=settings.logs_bucket,
            create_buckets=settings.s3_create_buckets,
            region=settings.s3_region,
        )
        try:
            store.check_buckets()
        except ProviderError as exc:
            if not exc.retryable:
                raise
        return store

    # Buckets ------------------------------------------------------------------------------------

    def check_buckets(self) -> None:
        """Make sure both buckets exist (creating them when allowed); done once per process."""
        with self._lock:
            if self._ready:
                return
            for setting, bucket in (
                ("ARTIFACTS_BUCKET", self.artifacts_bucket),
                ("LOGS_BUCKET", self.logs_bucket),
            ):
                ensure_bucket(self._client, bucket, setting, create=self._create_buckets, region=self._region)
            self._ready = True

    def _bucket_of(self, key: str) -> str:
        return self.logs_bucket if key.startswith(LOGS_PREFIX) else self.artifacts_bucket

    def _bucket(self, key: str) -> str:
        self.check_buckets()
        return self._bucket_of(key)

    # ObjectStore ----------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        bucket = self._bucket(key)
        try:
            self._client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise s3_error(f"put {key}", exc, bucket) from exc

    def get(self, key: str) -> bytes:
        bucket = self._bucket(key)
        try:
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"]
            with body:
                return bytes(body.read())
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                raise ObjectNotFound(key) from None
            raise s3_error(f"get {key}", exc, bucket) from exc
        except BotoCoreError as exc:
            raise s3_error(f"get {key}", exc, bucket) from exc

    def _exists(self, key: str) -> bool:
        bucket = self._bucket(key)
        try:
            self._client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return False
            raise s3_error(f"check {key}", exc, bucket) from exc
        except BotoCoreError as exc:
            raise s3_error(f"check {key}", exc, bucket) from exc
        return True

    def missing(self, keys: Iterable[str]) -> set[str]:
        wanted = sorted(set(keys))
        if len(wanted) <= 1:
            return {key for key in wanted if not self._exists(key)}
        with ThreadPoolExecutor(max_workers=CHECK_CONCURRENCY) as pool:
            found = pool.map(self._exists, wanted)
            return {key for key, exists in zip(wanted, found, strict=True) if not exists}

    def delete(self, key: str) -> None:
        bucket = self._bucket(key)
        try:
            self._client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise s3_error(f"delete {key}", exc, bucket) from exc

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key that starts with ``prefix``, in key order per bucket."""
        self.check_buckets()
        buckets: list[str] = []
        if not prefix.startswith(LOGS_PREFIX):
            buckets.append(self.artifacts_bucket)
        if LOGS_PREFIX.startswith(prefix) or prefix.startswith(LOGS_PREFIX):
            buckets.append(self.logs_bucket)
        for bucket in dict.fromkeys(buckets):
            try:
                for page in self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix
                ):
                    for item in page.get("Contents", ()):
                        key = str(item["Key"])
                        # A shared bucket holds both kinds; each key is reported from its own bucket.
                        if self._bucket_of(key) == bucket:
                            yield key
            except (ClientError, BotoCoreError) as exc:
                raise s3_error(f"list {prefix or '/'}", exc, bucket) from exc

    def presigned_url(self, key: str, *, expires_s: int = 3600) -> str:
        """A time-limited GET URL for ``key``; signing is local, so this makes no request."""
        bucket = self._bucket_of(key)
        try:
            return str(
                self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
                )
            )
        except (ClientError, BotoCoreError) as exc:
            raise s3_error(f"sign {key}", exc, bucket) from exc
