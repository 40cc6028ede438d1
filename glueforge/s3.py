"""S3-compatible object storage through boto3: the remote store and the remote build cache.

Credentials come from the standard AWS chain (environment, profile, instance role), never
from files in the repository, and are never logged or put in an error message. Retries are
botocore's (``standard`` mode); large files go up in multipart uploads (s3transfer).
``put_if_absent`` is a conditional write (``If-None-Match: *``): of two concurrent writers of
one key, exactly one wins.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from glueforge import GlueforgeError
from glueforge.names import UnsafeName, safe_name

log = logging.getLogger(__name__)
MULTIPART_THRESHOLD = 16 << 20
NOT_FOUND = ("404", "NoSuchKey", "NotFound")


class StoreUnavailable(GlueforgeError):
    """The object store cannot be reached or refused the request."""


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str
    endpoint_url: str | None = None

    @classmethod
    def parse(cls, url: str, endpoint_url: str | None = None) -> "Location":
        if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
            raise GlueforgeError(f"not an S3 location: {url!r} (expected s3://bucket[/prefix])")
        bucket, _, prefix = url[5:].partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or ".." in bucket:
            raise GlueforgeError(f"{url!r}: {bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
        for part in [p for p in prefix.split("/") if p]:
            try:
                safe_name(part, "prefix part")
            except UnsafeName as e:
                raise GlueforgeError(f"{url!r}: {e}") from None
        return cls(bucket, prefix.strip("/"), endpoint_url or os.environ.get("GLUEFORGE_S3_ENDPOINT") or None)

    def __str__(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)


class Bucket:
    """One bucket and prefix, with the few operations the store and the cache need."""

    def __init__(self, location: Location) -> None:
        import boto3
        from botocore.config import Config

        self.location = location
        # botocore's and urllib3's debug logs carry request headers (the access key id in
        # Authorization) and bodies: whatever the application's logging, keep them at WARNING
        for name in ("botocore", "boto3", "s3transfer", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = boto3.client(
            "s3",
            endpoint_url=location.endpoint_url,
            config=Config(retries={"mode": "standard", "max_attempts": int(os.environ.get("GLUEFORGE_S3_ATTEMPTS", "4"))},
                          connect_timeout=5, read_timeout=60),
        )

    def _fail(self, action: str, key: str, error: Exception) -> StoreUnavailable:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "?")
            reason = f"{code} ({error.response.get('ResponseMetadata', {}).get('HTTPStatusCode', '?')})"
        elif isinstance(error, EndpointConnectionError):
            reason = "cannot connect to the endpoint"
        elif isinstance(error, NoCredentialsError):
            reason = "no AWS credentials found (environment, ~/.aws profile or instance role)"
        else:
            reason = type(error).__name__
        return StoreUnavailable(f"{action} {key} in {self.location}: {reason}")

    def _errors(self):
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    @staticmethod
    def _code(error: Exception) -> str | None:
        return getattr(error, "response", {}).get("Error", {}).get("Code")

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.location.bucket, Key=key)
            return True
        except self._errors() as e:
            if self._code(e) in NOT_FOUND:
                return False
            raise self._fail("checking", key, e) from None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()
        except self._errors() as e:
            if self._code(e) in NOT_FOUND:
                return None
            raise self._fail("reading", key, e) from None

    def put_if_absent(self, key: str, body: bytes) -> bool:
        """Write ``key`` only if it does not exist; False if another writer was first."""
        try:
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=body, IfNoneMatch="*")
            return True
        except self._errors() as e:
            if self._code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._fail("writing", key, e) from None

    def put_bytes(self, key: str, body: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=body)
        except self._errors() as e:
            raise self._fail("writing", key, e) from None

    def upload(self, path: Path, key: str, what: str | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        from glueforge.progress import progress

        try:
            with progress(f"upload {what or Path(path).name}", total=Path(path).stat().st_size, unit="B") as bar:
                self.client.upload_file(str(path), self.location.bucket, key, Callback=bar.update,
                                        Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                                              multipart_chunksize=MULTIPART_THRESHOLD))
        except (*self._errors(), Exception) as e:  # s3transfer wraps failures in its own exception types
            raise self._fail("uploading", key, e) from None

    def download(self, key: str, path: Path, what: str | None = None, size: int | None = None) -> None:
        from glueforge.progress import progress

        try:
            with progress(f"download {what or Path(path).name}", total=size, unit="B") as bar:
                self.client.download_file(self.location.bucket, key, str(path), Callback=bar.update)
        except (*self._errors(), Exception) as e:
            raise self._fail("downloading", key, e) from None

    def list_prefixes(self, prefix: str) -> list[str]:
        """The 'directories' directly below ``prefix``."""
        names: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix.rstrip("/") + "/", Delimiter="/"
            ):
                names += [p["Prefix"][len(prefix.rstrip("/")) + 1:].strip("/") for p in page.get("CommonPrefixes", [])]
        except self._errors() as e:
            raise self._fail("listing", prefix, e) from None
        return names

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.location.bucket)
        except self._errors():
            try:
                self.client.create_bucket(Bucket=self.location.bucket)
            except self._errors() as e:
                raise self._fail("creating bucket", self.location.bucket, e) from None
