"""Ingestion of ``training_metrics.json`` into the platform's QuickTest row.

The Cloud Function (``functions/main.py``) and ``metrics-ingest replay`` share
one code path: :func:`ingest.pipeline.ingest_object`. Importing this package
is cheap: the GCS client, psycopg2 and the schema validator (jsonschema-rs) load on first use.
"""
