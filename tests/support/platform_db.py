"""A migrated database with the dev platform table, and helpers around it.

``platform_db`` (session): the session's PostgreSQL database with
``migrations/dev/ml_platform_quicktest.sql`` and ``metrics-ingest migrate``
applied. Tests keep apart by using their own folders (``new_quicktest``).
``artifacts`` (per test): the emulator bucket ``ml-artifacts`` and an upload
helper returning the object resource a finalize event carries.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from google.cloud import storage
from psycopg2 import sql

from ingest import store
from ingest.config import Settings
from metrics_ingest.localstack.emulator import GcsEmulator
from metrics_ingest.localstack.stack import fetch_ingestions
from metrics_ingest.migrations import apply_migrations, create_dev_platform_table

BUCKET = "ml-artifacts"


@dataclasses.dataclass
class PlatformDb:
    """The platform database as the tests see it."""

    url: str
    table: str = "ml_platform_quicktest"

    def settings(self, **overrides: Any) -> Settings:
        values = {"database_url": self.url, "quicktest_table": self.table, "gcs_timeout": 5.0}
        values.update(overrides)
        return Settings(**values)

    def connect(self) -> Any:
        return psycopg2.connect(self.url)

    def new_quicktest(self, bucket: str = BUCKET, *, trailing_slash: bool = False, history: Any = None) -> tuple[int, str]:
        """Insert a QuickTest row for a fresh folder; returns (id, folder inside the bucket)."""
        folder = f"quick_tests/{uuid.uuid4().hex[:12]}"
        path = f"gs://{bucket}/{folder}" + ("/" if trailing_slash else "")
        conn = self.connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (name, gcs_artifacts_path, mlflow_run_id, training_history_json)"
                        " VALUES (%s, %s, '', %s) RETURNING id"
                    ).format(sql.Identifier(self.table)),
                    (folder, path, None if history is None else psycopg2.extras.Json(history)),
                )
                (row_id,) = cur.fetchone()
        finally:
            conn.close()
        return row_id, folder

    def row(self, row_id: int) -> dict[str, Any]:
        conn = self.connect()
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(sql.SQL("SELECT * FROM {} WHERE id = %s").format(sql.Identifier(self.table)), (row_id,))
                return dict(cur.fetchone())
        finally:
            conn.close()

    def history(self, row_id: int) -> Any:
        return self.row(row_id)["training_history_json"]

    def ingestions(self, bucket: str, name: str) -> list[dict[str, Any]]:
        return fetch_ingestions(self.url, bucket, name)


@pytest.fixture(scope="session")
def platform_db(empty_database_url: str) -> Iterator[PlatformDb]:
    """The session database, platform table created and migrations applied."""
    create_dev_platform_table(empty_database_url)
    apply_migrations(empty_database_url)
    try:
        yield PlatformDb(empty_database_url)
    finally:
        store.close_pools()  # before the database is dropped


@dataclasses.dataclass
class Artifacts:
    """The emulator bucket the trainer writes to."""

    emulator: GcsEmulator
    bucket_name: str = BUCKET

    @property
    def bucket(self) -> storage.Bucket:
        return storage.Client().bucket(self.bucket_name)

    def upload(
        self,
        folder: str,
        data: bytes,
        name: str = "training_metrics.json",
        *,
        content_encoding: str | None = None,
    ) -> dict[str, Any]:
        """Upload ``data`` as ``folder/name``; returns the finalize event's object resource."""
        blob = self.bucket.blob(f"{folder}/{name}")
        if content_encoding:
            blob.content_encoding = content_encoding
        blob.upload_from_string(data, content_type="application/json")
        return resource_of(blob)


def resource_of(blob: storage.Blob) -> dict[str, Any]:
    """The GCS object resource of an uploaded blob, with int64 fields as strings (as GCS sends)."""
    resource = {
        "kind": "storage#object",
        "bucket": blob.bucket.name,
        "name": blob.name,
        "generation": str(blob.generation),
        "metageneration": str(blob.metageneration or 1),
        "size": str(blob.size),
        "contentType": blob.content_type or "application/json",
    }
    if blob.content_encoding:
        resource["contentEncoding"] = blob.content_encoding
    for key, value in (("md5Hash", blob.md5_hash), ("crc32c", blob.crc32c)):
        if value:
            resource[key] = value
    return resource


@pytest.fixture
def artifacts(gcs_env: GcsEmulator) -> Artifacts:
    """The ``ml-artifacts`` bucket in the session emulator (faults cleared after the test)."""
    gcs_env.create_bucket(BUCKET)
    return Artifacts(gcs_env)
