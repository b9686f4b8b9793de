"""The platform's QuickTest, as far as the ingestion is concerned.

Its table is ``ml_platform_quicktest`` (app ``ml_platform``, model ``QuickTest``);
``migrations/dev/ml_platform_quicktest.sql`` creates the same columns for local
runs and tests, where Django's own migrations are not run.

Example::

    qt = QuickTest.objects.get(pk=42)
    qt.training_history_json["summary"]["val_loss"]["best"]   # a dict: JSONField reads jsonb as Python
"""

from __future__ import annotations

from django.db import models


class QuickTest(models.Model):
    """One training run of the platform; the function fills ``training_history_json``."""

    name = models.CharField(max_length=255, default="", blank=True)
    status = models.CharField(max_length=32, default="pending")
    gcs_artifacts_path = models.CharField(max_length=500, default="", blank=True)
    mlflow_run_id = models.CharField(max_length=255, default="", blank=True,
                                     help_text="Deprecated: MLflow run ID (kept for historical data)")
    training_history_json = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "ml_platform"
        db_table = "ml_platform_quicktest"
