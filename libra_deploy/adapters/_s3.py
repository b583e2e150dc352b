"""boto3 plumbing shared by the S3 adapters (the object store and the deploy target).

Not an adapter itself: the client both build from the settings, the one mapping of botocore's
failures onto our retry policy, and the bucket check done at start-up.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as S3ConnectionError

from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError, ProviderError, provider_error

#: Error codes that mean "no such object".
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


def make_client(settings: Settings) -> Any:
    """An S3 client for S3_ENDPOINT_URL with R2-compatible settings (see Settings.s3_botocore_config)."""
    return boto3.client("s3", config=Config(**settings.s3_botocore_config()), **settings.s3_client_options())


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def s3_error(action: str, exc: ClientError | BotoCoreError, bucket: str) -> ProviderError:
    """Map a botocore failure onto our retry policy (no answer, 429, 5xx: retryable)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error_code(exc)
        if code == "NoSuchBucket":
            return ProviderError(f"S3: bucket {bucket} does not exist", code="BUCKET_NOT_FOUND")
        message = exc.response.get("Error", {}).get("Message") or code
        return provider_error("S3", action, f"{code}: {message}", status=int(status) if status else None)
    if isinstance(exc, S3ConnectionError | HTTPClientError):
        return provider_error("S3", action, f"{type(exc).__name__}: {exc}", status=None)
    # No credentials, a malformed parameter...: the same call cannot succeed later.
    return ProviderError(f"S3: {action} failed: {exc}", code="PROVIDER_REJECTED")


def ensure_bucket(client: Any, bucket: str, setting: str, *, create: bool, region: str) -> None:
    """Check that ``bucket`` exists; create it when ``create``, else raise ConfigError naming it."""
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise s3_error(f"check bucket {bucket}", exc, bucket) from exc
    except BotoCoreError as exc:
        raise s3_error(f"check bucket {bucket}", exc, bucket) from exc
    if not create:
        raise ConfigError(
            setting, f"names bucket {bucket}, which does not exist (S3_CREATE_BUCKETS=1 creates it)"
        )
    options: dict[str, Any] = {"Bucket": bucket}
    if region not in ("", "us-east-1"):
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**options)
    except ClientError as exc:
        if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise s3_error(f"create bucket {bucket}", exc, bucket) from exc
    except BotoCoreError as exc:
        raise s3_error(f"create bucket {bucket}", exc, bucket) from exc
