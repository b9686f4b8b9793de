"""The local stack: everything ``metrics-ingest dev`` and ``demo`` run on one machine.

- ``emulator``: the GCS API emulator (gcp-storage-emulator plus the GCS behaviour we rely on);
- ``bridge``: turns each emulator upload into the finalize CloudEvent Eventarc would send;
- ``stack``: PostgreSQL from pip, the emulator, the function under functions-framework, the bridge;
- ``demo_model`` and ``render``: the demo's tiny two-tower model and its terminal rendering of a row.

Nothing here is imported by the function or by ``replay``/``export-mlflow``.
"""
