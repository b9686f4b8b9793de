#!/usr/bin/env bash
# deploy.sh: deploy the training-metrics ingestion function to Google Cloud, with
# its nightly reconciliation (a Cloud Run Job started by Cloud Scheduler) and its
# alerts (a log-based metric of outcomes and alert policies); and (subcommand
# teardown-mlflow) remove the MLflow infrastructure it replaces.
#
# Idempotent: re-running it converges to the same state (existence is checked
# before anything is created, and what exists is updated; IAM bindings and the
# function and job deploys are declarative). --dry-run prints every command,
# shell-quoted, and runs none (it writes the monitoring files it would send).
# Run ./deploy.sh --help for the flags and the environment variables behind them.
set -euo pipefail

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "deploy.sh needs bash 4.4 or newer (on macOS: brew install bash); this is $BASH_VERSION" >&2
  exit 2
fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly PROG=deploy.sh

# The function's contract (DESIGN.md): entry point, event, runtime.
readonly ENTRY_POINT=ingest_training_metrics
readonly EVENT_TYPE=google.cloud.storage.object.v1.finalized
readonly RUNTIME=python312
readonly APIS=(
  cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com
  artifactregistry.googleapis.com eventarc.googleapis.com pubsub.googleapis.com
  storage.googleapis.com sqladmin.googleapis.com secretmanager.googleapis.com
  iam.googleapis.com logging.googleapis.com cloudscheduler.googleapis.com monitoring.googleapis.com
)
# The memory budget (functions/ingest/memory.py): files in flight are admitted
# up to MEMORY_BUDGET_BYTES together, each weighing PARSE_COST x its size (the
# measured worst case). The function and the job get the instance's memory less
# the runtime as their budget, and one file at the cap must fit it alone.
# Keep PARSE_COST in step with memory.py (tests/test_deploy.py compares them).
readonly MEMORY_PARSE_COST=48
readonly MEMORY_RUNTIME_MIB=256
# Limits Cloud Run functions (2nd gen, event-driven) enforce; gcloud or the API
# would refuse beyond them, after the build.
readonly MAX_EVENT_TIMEOUT_S=540
readonly MIN_MEMORY_MIB=128
readonly MAX_MEMORY_MIB=32768
readonly MAX_CONCURRENCY=1000
readonly MAX_INSTANCES_LIMIT=1000
readonly MAX_TASKS=10000
readonly MAX_REPLAY_WORKERS=256  # metrics_ingest/replay.py MAX_WORKERS

usage() {
  cat <<EOF
Usage:
  $PROG [deploy] [FLAGS]           deploy (or re-deploy) the ingestion function
  $PROG teardown-mlflow [FLAGS]    delete the MLflow service, its database and build trigger

Every flag can also come from the environment variable named beside it.
A flag given on the command line wins over the variable.

Deploy, required:
  --project ID                 DEPLOY_PROJECT (else GOOGLE_CLOUD_PROJECT)
  --region REGION              DEPLOY_REGION: the function's region, e.g. europe-central2
  --bucket NAME                DEPLOY_BUCKET: the bucket whose uploads are ingested
  --instance CONNECTION        DEPLOY_INSTANCE: Cloud SQL connection name PROJECT:REGION:INSTANCE
  --db-name NAME               DEPLOY_DB_NAME: the platform's database
  --db-user NAME               DEPLOY_DB_USER: the function's database role (README: least privilege)
  --db-password-secret NAME[:VERSION]  DEPLOY_DB_PASSWORD_SECRET: Secret Manager secret holding
                               that role's password (version: latest); the function gets it as
                               PGPASSWORD, never on a command line
Deploy, optional:
  --function-name NAME         DEPLOY_FUNCTION_NAME: default ingest-training-metrics
  --runtime-sa NAME|EMAIL      DEPLOY_RUNTIME_SA: default metrics-ingest-runtime (created if missing)
  --trigger-sa NAME|EMAIL      DEPLOY_TRIGGER_SA: default metrics-ingest-trigger (created if missing)
  --bucket-location LOC        DEPLOY_BUCKET_LOCATION: Eventarc trigger location; default: the bucket's
  --quicktest-table NAME       DEPLOY_QUICKTEST_TABLE: default ml_platform_quicktest
  --metrics-filename NAME      DEPLOY_METRICS_FILENAME: default training_metrics.json
  --memory SIZE                DEPLOY_MEMORY: default 1Gi
  --cpu N                      DEPLOY_CPU: default 1 (a concurrency above 1 needs at least 1)
  --timeout DURATION           DEPLOY_TIMEOUT: default 300s
  --concurrency N              DEPLOY_CONCURRENCY: default 8 (most events are other objects)
  --max-instances N            DEPLOY_MAX_INSTANCES: default 10 (times the pool size: under max_connections)
  --max-metrics-bytes N        DEPLOY_MAX_METRICS_BYTES: default 16777216; larger files are rejected unread
                               (--memory must hold the function's memory budget: refused otherwise)
  --db-pool-size N             DEPLOY_DB_POOL_SIZE: default 8, database connections per function instance
  --max-event-age DURATION     DEPLOY_MAX_EVENT_AGE: default 6h (s, m or h, at most 24h): an older event that
                               would be retried is recorded expired and acknowledged; it must be under
                               --reconcile-since, whose nightly run ingests the object instead
Dead letters (what still exhausts its delivery attempts):
  --no-dead-letter             DEPLOY_NO_DEAD_LETTER=1: no dead-letter topic on the trigger's subscription
                               (one an earlier deploy set is cleared)
  --dead-letter-topic NAME     DEPLOY_DEAD_LETTER_TOPIC: default FUNCTION_NAME-dead-letter, with a
                               subscription NAME-hold that keeps its messages 7 days (and an alert)
  --max-delivery-attempts N    DEPLOY_MAX_DELIVERY_ATTEMPTS: default 50 (5..100), deliveries before an
                               event goes to the dead-letter topic
  --db-max-connections N       DEPLOY_DB_MAX_CONNECTIONS: optional, the database's max_connections left for us;
                               refused when max-instances x pool size + job tasks x workers exceeds it
  --source DIR                 DEPLOY_SOURCE: default $SCRIPT_DIR/functions
  --dry-run                    DEPLOY_DRY_RUN=1: print the commands, run none, need no credentials
                               (the monitoring files are still written, to --config-dir)
Reconciliation (a Cloud Run Job, run nightly by Cloud Scheduler):
  --no-reconcile               DEPLOY_NO_RECONCILE=1: no job, no schedule (nor its alert)
  --reconcile-job NAME         DEPLOY_RECONCILE_JOB: default metrics-ingest-reconcile
  --reconcile-prefix PREFIX    DEPLOY_RECONCILE_PREFIX: object-name prefix to replay; default: the whole bucket
  --reconcile-since DURATION   DEPLOY_RECONCILE_SINCE: default 72h (objects updated within it; s, m, h or d)
  --reconcile-tasks N          DEPLOY_RECONCILE_TASKS: default 1, shards run in parallel (1..$MAX_TASKS)
  --reconcile-workers N        DEPLOY_RECONCILE_WORKERS: default 4, per task (a database connection each)
  --reconcile-memory SIZE      DEPLOY_RECONCILE_MEMORY: default 2Gi, per task
  --reconcile-sa NAME|EMAIL    DEPLOY_RECONCILE_SA: default metrics-ingest-reconcile (created if missing)
  --reconcile-source DIR       DEPLOY_RECONCILE_SOURCE: default $SCRIPT_DIR (built with its Dockerfile)
  --schedule CRON              DEPLOY_SCHEDULE: default '30 3 * * *'
  --time-zone TZ               DEPLOY_TIME_ZONE: default Etc/UTC
  --scheduler-sa NAME|EMAIL    DEPLOY_SCHEDULER_SA: default metrics-ingest-scheduler (created if missing)
Alerts:
  --no-alerts                  DEPLOY_NO_ALERTS=1: no log-based metric, no alert policies
  --notification-channel NAME  DEPLOY_NOTIFICATION_CHANNEL: projects/P/notificationChannels/ID; without
                               one the policies still open incidents in the console
  --config-dir DIR             DEPLOY_CONFIG_DIR: where the metric and policy files are written
                               (default: a new temporary folder, kept)

teardown-mlflow (Phase 3 of the MLflow removal plan):
  --project ID                 DEPLOY_PROJECT (else GOOGLE_CLOUD_PROJECT)
  --region REGION              DEPLOY_REGION: region of the MLflow Cloud Run service
  --mlflow-service NAME        DEPLOY_MLFLOW_SERVICE: Cloud Run service, e.g. mlflow-server
  --mlflow-sql-instance NAME   DEPLOY_MLFLOW_SQL_INSTANCE: Cloud SQL instance id (a final backup is kept)
  --mlflow-build-trigger NAME  DEPLOY_MLFLOW_BUILD_TRIGGER: Cloud Build trigger, e.g. mlflow-server
  --mlflow-build-trigger-region R  DEPLOY_MLFLOW_BUILD_TRIGGER_REGION: default global
  --mlflow-service-account EMAIL   DEPLOY_MLFLOW_SERVICE_ACCOUNT: optional, delete it too
  --final-backup-days N        DEPLOY_FINAL_BACKUP_DAYS: 1..365, default 30: the final SQL backup's life
  --database-url URL           DATABASE_URL: the platform database (else libpq PG* variables), checked
                               for QuickTest rows whose history only MLflow holds (needs psql)
  --quicktest-table NAME       DEPLOY_QUICKTEST_TABLE: default ml_platform_quicktest
  --yes                        DEPLOY_YES=1: delete; without it, only say what would be deleted
  --force                      DEPLOY_FORCE=1: delete even while rows would lose their history
  --dry-run                    DEPLOY_DRY_RUN=1: run the row check (read-only), print the deletes, run none

Exit status: 0 done (or nothing to do), 1 a command failed or teardown refused, 2 bad settings.
EOF
}

die_usage() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  printf "Run '%s --help' for the flags.\n" "$PROG" >&2
  exit 2
}

note() { printf '%s\n' "$*" >&2; }

# --- settings ----------------------------------------------------------------

ACTION=deploy
if [[ $# -gt 0 && $1 != -* ]]; then
  ACTION=$1
  shift
fi
case $ACTION in
  deploy | teardown-mlflow) ;;
  help) usage; exit 0 ;;
  *) die_usage "unknown command '$ACTION' (expected deploy or teardown-mlflow)" ;;
esac

PROJECT=${DEPLOY_PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}
REGION=${DEPLOY_REGION:-}
BUCKET=${DEPLOY_BUCKET:-}
INSTANCE=${DEPLOY_INSTANCE:-}
DB_NAME=${DEPLOY_DB_NAME:-}
DB_USER=${DEPLOY_DB_USER:-}
DB_PASSWORD_SECRET=${DEPLOY_DB_PASSWORD_SECRET:-}
FUNCTION_NAME=${DEPLOY_FUNCTION_NAME:-ingest-training-metrics}
RUNTIME_SA=${DEPLOY_RUNTIME_SA:-metrics-ingest-runtime}
# The function reads objects by name only: storage.objects.get, no list
# (roles/storage.legacyObjectReader holds exactly that). DEPLOY_FUNCTION_BUCKET_ROLE
# may name a custom role with the same single permission instead.
FUNCTION_BUCKET_ROLE=${DEPLOY_FUNCTION_BUCKET_ROLE:-roles/storage.legacyObjectReader}
TRIGGER_SA=${DEPLOY_TRIGGER_SA:-metrics-ingest-trigger}
BUCKET_LOCATION=${DEPLOY_BUCKET_LOCATION:-}
QUICKTEST_TABLE=${DEPLOY_QUICKTEST_TABLE:-ml_platform_quicktest}
METRICS_FILENAME=${DEPLOY_METRICS_FILENAME:-training_metrics.json}
MEMORY=${DEPLOY_MEMORY:-1Gi}
CPU=${DEPLOY_CPU:-1}
TIMEOUT=${DEPLOY_TIMEOUT:-300s}
CONCURRENCY=${DEPLOY_CONCURRENCY:-8}
MAX_INSTANCES=${DEPLOY_MAX_INSTANCES:-10}
SOURCE_DIR=${DEPLOY_SOURCE:-$SCRIPT_DIR/functions}
MAX_METRICS_BYTES=${DEPLOY_MAX_METRICS_BYTES:-16777216}
DB_POOL_SIZE=${DEPLOY_DB_POOL_SIZE:-8}
DB_MAX_CONNECTIONS=${DEPLOY_DB_MAX_CONNECTIONS:-}
MAX_EVENT_AGE=${DEPLOY_MAX_EVENT_AGE:-6h}
NO_DEAD_LETTER=${DEPLOY_NO_DEAD_LETTER:-0}
DEAD_LETTER_TOPIC=${DEPLOY_DEAD_LETTER_TOPIC:-}
MAX_DELIVERY_ATTEMPTS=${DEPLOY_MAX_DELIVERY_ATTEMPTS:-50}
NO_RECONCILE=${DEPLOY_NO_RECONCILE:-0}
RECONCILE_JOB=${DEPLOY_RECONCILE_JOB:-metrics-ingest-reconcile}
RECONCILE_PREFIX=${DEPLOY_RECONCILE_PREFIX:-}
RECONCILE_SINCE=${DEPLOY_RECONCILE_SINCE:-72h}
RECONCILE_TASKS=${DEPLOY_RECONCILE_TASKS:-1}
RECONCILE_WORKERS=${DEPLOY_RECONCILE_WORKERS:-4}
RECONCILE_MEMORY=${DEPLOY_RECONCILE_MEMORY:-2Gi}
RECONCILE_SA=${DEPLOY_RECONCILE_SA:-metrics-ingest-reconcile}
RECONCILE_SOURCE=${DEPLOY_RECONCILE_SOURCE:-$SCRIPT_DIR}
SCHEDULE=${DEPLOY_SCHEDULE:-30 3 * * *}
TIME_ZONE=${DEPLOY_TIME_ZONE:-Etc/UTC}
SCHEDULER_SA=${DEPLOY_SCHEDULER_SA:-metrics-ingest-scheduler}
NO_ALERTS=${DEPLOY_NO_ALERTS:-0}
NOTIFICATION_CHANNEL=${DEPLOY_NOTIFICATION_CHANNEL:-}
CONFIG_DIR=${DEPLOY_CONFIG_DIR:-}
# Seconds between tries while a new log metric is not yet visible to alerting.
METRIC_WAIT_SECONDS=${DEPLOY_METRIC_WAIT_SECONDS:-60}
DRY_RUN=${DEPLOY_DRY_RUN:-0}
MLFLOW_SERVICE=${DEPLOY_MLFLOW_SERVICE:-}
MLFLOW_SQL_INSTANCE=${DEPLOY_MLFLOW_SQL_INSTANCE:-}
MLFLOW_BUILD_TRIGGER=${DEPLOY_MLFLOW_BUILD_TRIGGER:-}
MLFLOW_BUILD_TRIGGER_REGION=${DEPLOY_MLFLOW_BUILD_TRIGGER_REGION:-global}
MLFLOW_SERVICE_ACCOUNT=${DEPLOY_MLFLOW_SERVICE_ACCOUNT:-}
FINAL_BACKUP_DAYS=${DEPLOY_FINAL_BACKUP_DAYS:-30}
DATABASE_URL_SETTING=${DATABASE_URL:-}
YES=${DEPLOY_YES:-0}
FORCE=${DEPLOY_FORCE:-0}

# Each subcommand's flags, space-separated with a space at both ends.
DEPLOY_FLAGS=" --project --region --bucket --instance --db-name --db-user --db-password-secret"
DEPLOY_FLAGS+=" --function-name --runtime-sa --trigger-sa --bucket-location --quicktest-table"
DEPLOY_FLAGS+=" --metrics-filename --memory --cpu --timeout --concurrency --max-instances --source --dry-run"
DEPLOY_FLAGS+=" --max-metrics-bytes --db-pool-size --db-max-connections --no-reconcile --reconcile-job"
DEPLOY_FLAGS+=" --reconcile-prefix --reconcile-since --reconcile-tasks --reconcile-workers --reconcile-memory"
DEPLOY_FLAGS+=" --reconcile-sa --reconcile-source --schedule --time-zone --scheduler-sa --no-alerts"
DEPLOY_FLAGS+=" --notification-channel --config-dir --max-event-age --no-dead-letter --dead-letter-topic"
DEPLOY_FLAGS+=" --max-delivery-attempts "
TEARDOWN_FLAGS=" --project --region --mlflow-service --mlflow-sql-instance --mlflow-build-trigger"
TEARDOWN_FLAGS+=" --mlflow-build-trigger-region --mlflow-service-account --final-backup-days"
TEARDOWN_FLAGS+=" --database-url --quicktest-table --yes --force --dry-run "

while [[ $# -gt 0 ]]; do
  arg=$1
  shift
  if [[ $arg == -h || $arg == --help ]]; then
    usage
    exit 0
  fi
  name=${arg%%=*}
  allowed=$DEPLOY_FLAGS
  [[ $ACTION == teardown-mlflow ]] && allowed=$TEARDOWN_FLAGS
  if [[ $arg != --* || $allowed != *" $name "* ]]; then
    die_usage "unknown argument '$arg' for $ACTION"
  fi
  case $name in
    --dry-run | --yes | --force | --no-reconcile | --no-alerts | --no-dead-letter)
      [[ $arg == *=* ]] && die_usage "$name takes no value"
      case $name in
        --dry-run) DRY_RUN=1 ;;
        --no-dead-letter) NO_DEAD_LETTER=1 ;;
        --no-reconcile) NO_RECONCILE=1 ;;
        --no-alerts) NO_ALERTS=1 ;;
        --yes) YES=1 ;;
        --force) FORCE=1 ;;
      esac
      continue
      ;;
  esac
  if [[ $arg == *=* ]]; then
    value=${arg#*=}
  else
    [[ $# -gt 0 && $1 != --* ]] || die_usage "$name needs a value"
    value=$1
    shift
  fi
  case $name in
    --project) PROJECT=$value ;;
    --region) REGION=$value ;;
    --bucket) BUCKET=$value ;;
    --instance) INSTANCE=$value ;;
    --db-name) DB_NAME=$value ;;
    --db-user) DB_USER=$value ;;
    --db-password-secret) DB_PASSWORD_SECRET=$value ;;
    --function-name) FUNCTION_NAME=$value ;;
    --runtime-sa) RUNTIME_SA=$value ;;
    --trigger-sa) TRIGGER_SA=$value ;;
    --bucket-location) BUCKET_LOCATION=$value ;;
    --quicktest-table) QUICKTEST_TABLE=$value ;;
    --metrics-filename) METRICS_FILENAME=$value ;;
    --memory) MEMORY=$value ;;
    --cpu) CPU=$value ;;
    --timeout) TIMEOUT=$value ;;
    --concurrency) CONCURRENCY=$value ;;
    --max-instances) MAX_INSTANCES=$value ;;
    --source) SOURCE_DIR=$value ;;
    --max-metrics-bytes) MAX_METRICS_BYTES=$value ;;
    --db-pool-size) DB_POOL_SIZE=$value ;;
    --db-max-connections) DB_MAX_CONNECTIONS=$value ;;
    --max-event-age) MAX_EVENT_AGE=$value ;;
    --dead-letter-topic) DEAD_LETTER_TOPIC=$value ;;
    --max-delivery-attempts) MAX_DELIVERY_ATTEMPTS=$value ;;
    --reconcile-job) RECONCILE_JOB=$value ;;
    --reconcile-prefix) RECONCILE_PREFIX=$value ;;
    --reconcile-since) RECONCILE_SINCE=$value ;;
    --reconcile-tasks) RECONCILE_TASKS=$value ;;
    --reconcile-workers) RECONCILE_WORKERS=$value ;;
    --reconcile-memory) RECONCILE_MEMORY=$value ;;
    --reconcile-sa) RECONCILE_SA=$value ;;
    --reconcile-source) RECONCILE_SOURCE=$value ;;
    --schedule) SCHEDULE=$value ;;
    --time-zone) TIME_ZONE=$value ;;
    --scheduler-sa) SCHEDULER_SA=$value ;;
    --notification-channel) NOTIFICATION_CHANNEL=$value ;;
    --config-dir) CONFIG_DIR=$value ;;
    --mlflow-service) MLFLOW_SERVICE=$value ;;
    --mlflow-sql-instance) MLFLOW_SQL_INSTANCE=$value ;;
    --mlflow-build-trigger) MLFLOW_BUILD_TRIGGER=$value ;;
    --mlflow-build-trigger-region) MLFLOW_BUILD_TRIGGER_REGION=$value ;;
    --mlflow-service-account) MLFLOW_SERVICE_ACCOUNT=$value ;;
    --final-backup-days) FINAL_BACKUP_DAYS=$value ;;
    --database-url) DATABASE_URL_SETTING=$value ;;
  esac
done

# --- validation (before any gcloud call) ---------------------------------------

DEAD_LETTER_TOPIC=${DEAD_LETTER_TOPIC:-$FUNCTION_NAME-dead-letter}

# sa_email NAME|EMAIL: the account's email (a bare name is this project's).
sa_email() {
  if [[ $1 == *@* ]]; then
    printf '%s' "$1"
  else
    printf '%s@%s.iam.gserviceaccount.com' "$1" "$PROJECT"
  fi
}

ERRORS=()
# require VALUE FLAG ENV: a missing required setting.
require() {
  [[ -n $1 ]] || ERRORS+=("$2 ($3) is required")
}
# check VALUE REGEX FLAG ENV WHAT: a malformed setting (empty values are reported by require).
check() {
  [[ -z $1 || $1 =~ $2 ]] || ERRORS+=("$3 ($4) must be $5; got '$1'")
}
check_bool() {
  [[ $1 == 0 || $1 == 1 ]] || ERRORS+=("$2 must be 0 or 1; got '$1'")
}
# check_int VALUE MIN MAX FLAG ENV: a whole number within MIN..MAX (its length is
# checked first, so that a 20-digit value never reaches bash's 64-bit arithmetic).
check_int() {
  local value=$1 min=$2 max=$3
  if [[ ! $value =~ ^[0-9]{1,10}$ ]] || ((10#$value < min || 10#$value > max)); then
    ERRORS+=("$4 ($5) must be a whole number from $min to $max; got '$value'")
  fi
}
# mebibytes SIZE: a --memory value (512Mi, 1Gi, 1G, 2GB, 512M, 512MB) in MiB, rounded down;
# nothing for a malformed or absurd value.
# The least memory (MiB) an instance needs: the runtime and one file at the cap.
memory_needed_mib() {
  echo $((MEMORY_RUNTIME_MIB + (MEMORY_PARSE_COST * MAX_METRICS_BYTES + 1048575) / 1048576))
}

# The memory budget (bytes) of an instance of SIZE: what the runtime leaves.
memory_budget_bytes() {
  echo $((($(mebibytes "$1") - MEMORY_RUNTIME_MIB) * 1048576))
}

# seconds DURATION: a number and s, m, h or d, in seconds; nothing when malformed.
seconds() {
  [[ $1 =~ ^([1-9][0-9]{0,6})([smhd])$ ]] || return 0
  case ${BASH_REMATCH[2]} in
    s) printf '%s' "${BASH_REMATCH[1]}" ;;
    m) printf '%s' $((BASH_REMATCH[1] * 60)) ;;
    h) printf '%s' $((BASH_REMATCH[1] * 3600)) ;;
    d) printf '%s' $((BASH_REMATCH[1] * 86400)) ;;
  esac
}

mebibytes() {
  local number unit
  [[ $1 =~ ^([1-9][0-9]{0,5})(Mi|Gi|M|G|MB|GB)$ ]] || return 0
  number=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]}
  case $unit in
    Mi) printf '%s' "$number" ;;
    Gi) printf '%s' $((number * 1024)) ;;
    M | MB) printf '%s' $((number * 1000000 / 1048576)) ;;
    G | GB) printf '%s' $((number * 1000000000 / 1048576)) ;;
  esac
}

readonly RE_PROJECT='^[a-z][-a-z0-9]{4,28}[a-z0-9]$'
readonly RE_REGION='^[a-z]+-[a-z]+[0-9]+$'
readonly RE_SA='^([a-z][-a-z0-9]{4,28}[a-z0-9]|[a-z][-a-z0-9]{4,28}[a-z0-9]@[-a-z0-9.]+\.gserviceaccount\.com)$'
readonly RE_TABLE='^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$'
readonly RE_POSITIVE='^[1-9][0-9]*$'
readonly RE_CLOUD_RUN_NAME='^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'

check_bool "$DRY_RUN" DEPLOY_DRY_RUN
require "$PROJECT" --project "DEPLOY_PROJECT or GOOGLE_CLOUD_PROJECT"
check "$PROJECT" "$RE_PROJECT" --project DEPLOY_PROJECT "a Google Cloud project id (6-30 lowercase letters, digits, hyphens)"

if [[ $ACTION == deploy ]]; then
  BUCKET=${BUCKET#gs://}
  BUCKET=${BUCKET%/}
  require "$REGION" --region DEPLOY_REGION
  require "$BUCKET" --bucket DEPLOY_BUCKET
  require "$INSTANCE" --instance DEPLOY_INSTANCE
  require "$DB_NAME" --db-name DEPLOY_DB_NAME
  require "$DB_USER" --db-user DEPLOY_DB_USER
  require "$DB_PASSWORD_SECRET" --db-password-secret DEPLOY_DB_PASSWORD_SECRET
  check "$REGION" "$RE_REGION" --region DEPLOY_REGION "a Cloud region such as europe-central2"
  check "$BUCKET" '^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$' --bucket DEPLOY_BUCKET \
    "a bucket name (lowercase letters, digits, - _ .), without a path"
  check "$INSTANCE" '^[a-z][-a-z0-9]{4,28}[a-z0-9]:[a-z]+-[a-z]+[0-9]+:[a-z][-a-z0-9]{0,97}$' \
    --instance DEPLOY_INSTANCE "a Cloud SQL connection name PROJECT:REGION:INSTANCE"
  check "$DB_NAME" '^[A-Za-z_][-A-Za-z0-9_]{0,62}$' --db-name DEPLOY_DB_NAME "a database name (letters, digits, _ and -)"
  check "$DB_USER" '^[A-Za-z_][-A-Za-z0-9_.@]{0,62}$' --db-user DEPLOY_DB_USER "a database user name"
  check "$DB_PASSWORD_SECRET" '^[A-Za-z0-9_-]{1,255}(:(latest|[1-9][0-9]*))?$' --db-password-secret \
    DEPLOY_DB_PASSWORD_SECRET "a Secret Manager secret id, optionally :VERSION"
  check "$FUNCTION_NAME" "$RE_CLOUD_RUN_NAME" --function-name DEPLOY_FUNCTION_NAME \
    "a function name (lowercase letters, digits, hyphens, at most 63)"
  check "$RUNTIME_SA" "$RE_SA" --runtime-sa DEPLOY_RUNTIME_SA "a service account name (6-30 chars) or email"
  check "$TRIGGER_SA" "$RE_SA" --trigger-sa DEPLOY_TRIGGER_SA "a service account name (6-30 chars) or email"
  check "$BUCKET_LOCATION" '^[A-Za-z0-9-]+$' --bucket-location DEPLOY_BUCKET_LOCATION "a location such as eu or europe-central2"
  check "$QUICKTEST_TABLE" "$RE_TABLE" --quicktest-table DEPLOY_QUICKTEST_TABLE "a table name, optionally schema-qualified (schema.table)"
  # The function matches base names: a '/' never matches one, '.' and '..' name no file.
  if [[ ! $METRICS_FILENAME =~ ^[A-Za-z0-9_.-]{1,255}$ || $METRICS_FILENAME == *..* || $METRICS_FILENAME == . ]]; then
    ERRORS+=("--metrics-filename (DEPLOY_METRICS_FILENAME) must be a file base name (letters, digits, _ - .; no '/', not empty, no '..'); got '$METRICS_FILENAME'")
  fi
  check "$MEMORY" '^[1-9][0-9]*(Mi|Gi|M|G|MB|GB)$' --memory DEPLOY_MEMORY "a size such as 512Mi or 1Gi"
  check "$CPU" '^([1-9][0-9]*|0?\.[0-9]+|[1-9][0-9]*\.[0-9]+)$' --cpu DEPLOY_CPU "a number of CPUs such as 1 or 0.5"
  check "$TIMEOUT" '^[1-9][0-9]*s$' --timeout DEPLOY_TIMEOUT "a duration in seconds such as 300s"
  check "$CONCURRENCY" "$RE_POSITIVE" --concurrency DEPLOY_CONCURRENCY "a positive integer"
  check "$MAX_INSTANCES" "$RE_POSITIVE" --max-instances DEPLOY_MAX_INSTANCES "a positive integer"
  # Values of the right shape that Cloud Run functions would still refuse (after the build).
  [[ $CONCURRENCY =~ $RE_POSITIVE ]] && check_int "$CONCURRENCY" 1 "$MAX_CONCURRENCY" --concurrency DEPLOY_CONCURRENCY
  [[ $MAX_INSTANCES =~ $RE_POSITIVE ]] && check_int "$MAX_INSTANCES" 1 "$MAX_INSTANCES_LIMIT" --max-instances DEPLOY_MAX_INSTANCES
  if [[ $TIMEOUT =~ ^[1-9][0-9]*s$ ]] && { ((${#TIMEOUT} > 6)) || ((${TIMEOUT%s} > MAX_EVENT_TIMEOUT_S)); }; then
    ERRORS+=("--timeout (DEPLOY_TIMEOUT) must be at most ${MAX_EVENT_TIMEOUT_S}s for an event-driven function; got '$TIMEOUT'")
  fi
  if [[ $CPU =~ ^[0-9.]+$ ]] && ! awk -v c="$CPU" 'BEGIN { exit !(c >= 0.083 && c <= 8) }'; then
    ERRORS+=("--cpu (DEPLOY_CPU) must be from 0.083 to 8; got '$CPU'")
  fi
  check_int "$MAX_METRICS_BYTES" 1 1073741824 --max-metrics-bytes DEPLOY_MAX_METRICS_BYTES
  check_int "$DB_POOL_SIZE" 1 100 --db-pool-size DEPLOY_DB_POOL_SIZE
  [[ -n $DB_MAX_CONNECTIONS ]] && check_int "$DB_MAX_CONNECTIONS" 1 262143 --db-max-connections DEPLOY_DB_MAX_CONNECTIONS
  memory_mib=$(mebibytes "$MEMORY")
  if [[ -n $memory_mib ]]; then
    if ((memory_mib < MIN_MEMORY_MIB || memory_mib > MAX_MEMORY_MIB)); then
      ERRORS+=("--memory (DEPLOY_MEMORY) must be from ${MIN_MEMORY_MIB}Mi to $((MAX_MEMORY_MIB / 1024))Gi; got '$MEMORY'")
    elif [[ $MAX_METRICS_BYTES =~ ^[0-9]{1,10}$ ]]; then
      needed_mib=$(memory_needed_mib)
      if ((memory_mib < needed_mib)); then
        ERRORS+=("--memory (DEPLOY_MEMORY) $MEMORY is below the ${needed_mib}Mi the function's memory budget needs for --max-metrics-bytes $MAX_METRICS_BYTES (${MEMORY_RUNTIME_MIB}Mi runtime + one file at ${MEMORY_PARSE_COST}x its size); raise --memory or lower --max-metrics-bytes")
      fi
    fi
  fi
  if [[ $CONCURRENCY =~ $RE_POSITIVE && ${#CONCURRENCY} -le 4 && $CONCURRENCY -gt 1 && $CPU =~ ^0?\.[0-9]+$ ]]; then
    ERRORS+=("--concurrency (DEPLOY_CONCURRENCY) above 1 needs --cpu (DEPLOY_CPU) of at least 1; got cpu '$CPU'")
  fi
  if [[ -n $SOURCE_DIR && ! -f $SOURCE_DIR/main.py ]]; then
    ERRORS+=("--source (DEPLOY_SOURCE) must be the function's folder with main.py; none in '$SOURCE_DIR'")
  fi
  # Two accounts, so that invoking the function and being the function stay apart.
  if [[ -n $PROJECT && $RUNTIME_SA =~ $RE_SA && $TRIGGER_SA =~ $RE_SA ]] &&
    [[ $(sa_email "$RUNTIME_SA") == "$(sa_email "$TRIGGER_SA")" ]]; then
    ERRORS+=("--trigger-sa (DEPLOY_TRIGGER_SA) must not be the runtime account (--runtime-sa); got '$TRIGGER_SA' for both")
  fi
  if [[ ! $FUNCTION_BUCKET_ROLE =~ ^(roles|projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/roles|organizations/[0-9]+/roles)/[A-Za-z0-9_.]{3,64}$ ]]; then
    ERRORS+=("DEPLOY_FUNCTION_BUCKET_ROLE must be a role name such as roles/storage.legacyObjectReader or projects/P/roles/ID; got '$FUNCTION_BUCKET_ROLE'")
  fi
  # The function's own rule (ingest.config): a number and s, m or h, from 1s to 24h.
  age_s=$(seconds "$MAX_EVENT_AGE")
  if [[ $MAX_EVENT_AGE != *d && -n $age_s ]] && ((age_s <= 86400)); then
    since_s=$(seconds "$RECONCILE_SINCE")
    if [[ $NO_RECONCILE == 0 && -n $since_s ]] && ((age_s >= since_s)); then
      ERRORS+=("--max-event-age (DEPLOY_MAX_EVENT_AGE) $MAX_EVENT_AGE must be under the reconciliation window --reconcile-since $RECONCILE_SINCE: an expired event's object is ingested by the nightly reconciliation, which must still list it")
    fi
  else
    ERRORS+=("--max-event-age (DEPLOY_MAX_EVENT_AGE) must be a duration from 1s to 24h such as 90s, 30m or 6h; got '$MAX_EVENT_AGE'")
  fi
  check_bool "$NO_DEAD_LETTER" DEPLOY_NO_DEAD_LETTER
  if [[ $NO_DEAD_LETTER == 0 ]]; then
    check_int "$MAX_DELIVERY_ATTEMPTS" 5 100 --max-delivery-attempts DEPLOY_MAX_DELIVERY_ATTEMPTS
    # A Pub/Sub topic id: a letter, then letters, digits and - _ . ~ + %, 3 to 255 (less the -hold suffix).
    check "$DEAD_LETTER_TOPIC" '^[A-Za-z][-A-Za-z0-9_.~+%]{2,249}$' --dead-letter-topic DEPLOY_DEAD_LETTER_TOPIC \
      "a Pub/Sub topic id (a letter, then letters, digits, - _ . ~ + %; at most 250)"
    if [[ $DEAD_LETTER_TOPIC == goog* ]]; then
      ERRORS+=("--dead-letter-topic (DEPLOY_DEAD_LETTER_TOPIC) must not start with 'goog'; got '$DEAD_LETTER_TOPIC'")
    fi
  fi
  check_bool "$NO_RECONCILE" DEPLOY_NO_RECONCILE
  check_bool "$NO_ALERTS" DEPLOY_NO_ALERTS
  if [[ $NO_RECONCILE == 0 ]]; then
    check "$RECONCILE_JOB" "$RE_CLOUD_RUN_NAME" --reconcile-job DEPLOY_RECONCILE_JOB \
      "a Cloud Run job name (lowercase letters, digits, hyphens, at most 63)"
    # No ',' (gcloud's --args list separator), no wildcard (replay refuses it), at most GCS's 1,024 bytes.
    if [[ ! $RECONCILE_PREFIX =~ ^[A-Za-z0-9_./=-]{0,1024}$ ]]; then
      ERRORS+=("--reconcile-prefix (DEPLOY_RECONCILE_PREFIX) must be an object-name prefix of letters, digits, _ . / = - (at most 1024); got '${RECONCILE_PREFIX:0:80}'")
    fi
    check "$RECONCILE_SINCE" '^[1-9][0-9]{0,6}[smhd]$' --reconcile-since DEPLOY_RECONCILE_SINCE "a duration such as 90s, 72h or 3d"
    check_int "$RECONCILE_TASKS" 1 "$MAX_TASKS" --reconcile-tasks DEPLOY_RECONCILE_TASKS
    check_int "$RECONCILE_WORKERS" 1 "$MAX_REPLAY_WORKERS" --reconcile-workers DEPLOY_RECONCILE_WORKERS
    job_mib=$(mebibytes "$RECONCILE_MEMORY")
    if [[ -z $job_mib ]] || ((job_mib < 512 || job_mib > MAX_MEMORY_MIB)); then
      ERRORS+=("--reconcile-memory (DEPLOY_RECONCILE_MEMORY) must be a size from 512Mi to 32Gi; got '$RECONCILE_MEMORY'")
    elif [[ $MAX_METRICS_BYTES =~ ^[0-9]{1,10}$ ]] && ((job_mib < $(memory_needed_mib))); then
      ERRORS+=("--reconcile-memory (DEPLOY_RECONCILE_MEMORY) $RECONCILE_MEMORY is below the $(memory_needed_mib)Mi one file at --max-metrics-bytes $MAX_METRICS_BYTES needs; raise it or lower --max-metrics-bytes")
    fi
    check "$RECONCILE_SA" "$RE_SA" --reconcile-sa DEPLOY_RECONCILE_SA "a service account name (6-30 chars) or email"
    check "$SCHEDULER_SA" "$RE_SA" --scheduler-sa DEPLOY_SCHEDULER_SA "a service account name (6-30 chars) or email"
    # Five cron fields of digits and * , - / (Cloud Scheduler's unix-cron).
    check "$SCHEDULE" '^[0-9*,/-]+( [0-9*,/-]+){4}$' --schedule DEPLOY_SCHEDULE "five cron fields such as '30 3 * * *'"
    check "$TIME_ZONE" '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$' --time-zone DEPLOY_TIME_ZONE \
      "a tz database name such as Etc/UTC or Europe/Warsaw"
    if [[ ! -f $RECONCILE_SOURCE/Dockerfile || ! -d $RECONCILE_SOURCE/metrics_ingest ]]; then
      ERRORS+=("--reconcile-source (DEPLOY_RECONCILE_SOURCE) must be this repository's root (Dockerfile, metrics_ingest/); got '$RECONCILE_SOURCE'")
    fi
    for pair in "RECONCILE_SA:--reconcile-sa" "SCHEDULER_SA:--scheduler-sa"; do
      variable=${pair%%:*}
      account=${!variable}
      if [[ -n $PROJECT && $account =~ $RE_SA ]]; then
        for other in "$RUNTIME_SA" "$TRIGGER_SA"; do
          [[ $(sa_email "$account") == "$(sa_email "$other")" ]] &&
            ERRORS+=("${pair#*:} must be an account of its own, not the function's runtime or trigger account; got '$account'")
        done
      fi
    done
    if [[ -n $PROJECT && $RECONCILE_SA =~ $RE_SA && $(sa_email "$RECONCILE_SA") == "$(sa_email "$SCHEDULER_SA")" ]]; then
      ERRORS+=("--scheduler-sa must not be the job's account (--reconcile-sa); got '$SCHEDULER_SA' for both")
    fi
  fi
  if [[ $NO_ALERTS == 0 ]]; then
    check "$NOTIFICATION_CHANNEL" '^projects/[a-z0-9][-a-z0-9]{4,28}[a-z0-9]/notificationChannels/[0-9A-Za-z_-]+$' \
      --notification-channel DEPLOY_NOTIFICATION_CHANNEL "a channel name projects/PROJECT/notificationChannels/ID"
  fi
  # Every connection the deployment can open at once, against what the database allows.
  if [[ -n $DB_MAX_CONNECTIONS && $DB_MAX_CONNECTIONS =~ ^[0-9]{1,6}$ && $MAX_INSTANCES =~ ^[0-9]{1,4}$ &&
    $DB_POOL_SIZE =~ ^[0-9]{1,3}$ && $RECONCILE_TASKS =~ ^[0-9]{1,5}$ && $RECONCILE_WORKERS =~ ^[0-9]{1,3}$ ]]; then
    connections=$((MAX_INSTANCES * DB_POOL_SIZE))
    detail="--max-instances $MAX_INSTANCES x --db-pool-size $DB_POOL_SIZE"
    if [[ $NO_RECONCILE == 0 ]]; then
      connections=$((connections + RECONCILE_TASKS * RECONCILE_WORKERS))
      detail+=" + --reconcile-tasks $RECONCILE_TASKS x --reconcile-workers $RECONCILE_WORKERS"
    fi
    if ((connections > DB_MAX_CONNECTIONS)); then
      ERRORS+=("$detail = $connections database connections, over --db-max-connections (DEPLOY_DB_MAX_CONNECTIONS) $DB_MAX_CONNECTIONS; lower them or raise the database's max_connections")
    fi
  fi
else
  require "$REGION" --region DEPLOY_REGION
  require "$MLFLOW_SERVICE" --mlflow-service DEPLOY_MLFLOW_SERVICE
  require "$MLFLOW_SQL_INSTANCE" --mlflow-sql-instance DEPLOY_MLFLOW_SQL_INSTANCE
  require "$MLFLOW_BUILD_TRIGGER" --mlflow-build-trigger DEPLOY_MLFLOW_BUILD_TRIGGER
  check "$REGION" "$RE_REGION" --region DEPLOY_REGION "a Cloud region such as europe-central2"
  check "$MLFLOW_SERVICE" "$RE_CLOUD_RUN_NAME" --mlflow-service DEPLOY_MLFLOW_SERVICE "a Cloud Run service name"
  check "$MLFLOW_SQL_INSTANCE" '^[a-z][-a-z0-9]{0,97}$' --mlflow-sql-instance DEPLOY_MLFLOW_SQL_INSTANCE \
    "a Cloud SQL instance id (not the connection name)"
  check "$MLFLOW_BUILD_TRIGGER" '^[A-Za-z0-9][-A-Za-z0-9_]{0,63}$' --mlflow-build-trigger DEPLOY_MLFLOW_BUILD_TRIGGER \
    "a Cloud Build trigger name or id"
  check "$MLFLOW_BUILD_TRIGGER_REGION" '^(global|[a-z]+-[a-z]+[0-9]+)$' --mlflow-build-trigger-region \
    DEPLOY_MLFLOW_BUILD_TRIGGER_REGION "global or a region"
  check "$MLFLOW_SERVICE_ACCOUNT" '^[a-z][-a-z0-9]{4,28}[a-z0-9]@[-a-z0-9.]+\.gserviceaccount\.com$' \
    --mlflow-service-account DEPLOY_MLFLOW_SERVICE_ACCOUNT "a service account email"
  check "$FINAL_BACKUP_DAYS" '^([1-9]|[1-9][0-9]|[12][0-9][0-9]|3[0-5][0-9]|36[0-5])$' --final-backup-days \
    DEPLOY_FINAL_BACKUP_DAYS "a number of days from 1 to 365"
  check "$QUICKTEST_TABLE" "$RE_TABLE" --quicktest-table DEPLOY_QUICKTEST_TABLE "a table name, optionally schema-qualified (schema.table)"
  check_bool "$YES" DEPLOY_YES
  check_bool "$FORCE" DEPLOY_FORCE
fi

if [[ ${#ERRORS[@]} -gt 0 ]]; then
  for e in "${ERRORS[@]}"; do
    printf '%s: %s\n' "$PROG" "$e" >&2
  done
  printf "Run '%s --help' for the flags.\n" "$PROG" >&2
  exit 2
fi

if [[ $DRY_RUN == 0 ]] && ! command -v gcloud >/dev/null 2>&1; then
  note "$PROG: gcloud not found on PATH (install the Google Cloud CLI, or use --dry-run)"
  exit 1
fi

# --- running commands -----------------------------------------------------------

# quoted ARGS...: the command as one line a shell reads back as the same words
# (a word with anything but plain characters is single-quoted).
quoted() {
  local word line=
  for word in "$@"; do
    if [[ $word =~ ^[-A-Za-z0-9_./:=@,+%]+$ ]]; then
      line+=" $word"
    else
      line+=" ${word@Q}"
    fi
  done
  printf '%s' "${line# }"
}

# run ARGS...: a command that changes something. Dry run: print it. Otherwise
# log it (to stderr) and run it.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s\n' "$(quoted "$@")"
  else
    note "+ $(quoted "$@")"
    "$@"
  fi
}

# exists ARGS...: a read-only list command that prints something when the
# resource exists. Dry run: not run; the resource is assumed absent.
exists() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '# check (not run in --dry-run; assumed absent): %s\n' "$(quoted "$@")"
    return 1
  fi
  local out
  out=$("$@") || {
    note "$PROG: this check failed: $(quoted "$@")"
    exit 1
  }
  [[ -n $out ]]
}

# lookup PLACEHOLDER ARGS...: a read-only command whose output a later command
# uses. Dry run: not run; PLACEHOLDER stands for its answer.
lookup() {
  local placeholder=$1
  shift
  if [[ $DRY_RUN == 1 ]]; then
    printf '# lookup (not run in --dry-run; %s below stands for its answer): %s\n' "$placeholder" "$(quoted "$@")" >&3
    printf '%s' "$placeholder"
    return 0
  fi
  local out
  out=$("$@") || {
    note "$PROG: this lookup failed: $(quoted "$@")"
    exit 1
  }
  [[ -n $out ]] || {
    note "$PROG: this lookup answered nothing: $(quoted "$@")"
    exit 1
  }
  printf '%s' "$out"
}
# current ARGS...: a read-only command printing the current setting. Dry run:
# not run; the setting is assumed absent (empty).
current() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '# check (not run in --dry-run; assumed absent): %s\n' "$(quoted "$@")" >&3
    return 0
  fi
  "$@" || {
    note "$PROG: this check failed: $(quoted "$@")"
    exit 1
  }
}
# lookup's and current's comments go to the dry run's stdout even from inside $(...).
exec 3>&1


# ensure_service_account EMAIL DESCRIPTION
ensure_service_account() {
  local email=$1 description=$2
  if [[ $email != *"@$PROJECT.iam.gserviceaccount.com" ]]; then
    # Another project's (or a Google-managed) account: use it as it is, create nothing.
    [[ $DRY_RUN == 1 ]] && printf '# %s belongs to another project: used as it is, not created\n' "$email"
    return 0
  fi
  if exists gcloud iam service-accounts list --project="$PROJECT" \
    --filter="email=$email" --format='value(email)'; then
    [[ $DRY_RUN == 1 ]] || note "service account $email exists"
    return 0
  fi
  run gcloud iam service-accounts create "${email%%@*}" --project="$PROJECT" \
    --display-name="$description"
}

# --- deploy ------------------------------------------------------------------------

do_deploy() {
  local runtime_sa trigger_sa secret secret_version location agent database_url env_vars
  runtime_sa=$(sa_email "$RUNTIME_SA")
  trigger_sa=$(sa_email "$TRIGGER_SA")
  secret=${DB_PASSWORD_SECRET%%:*}
  secret_version=latest
  [[ $DB_PASSWORD_SECRET == *:* ]] && secret_version=${DB_PASSWORD_SECRET#*:}

  if [[ $DRY_RUN == 1 ]]; then
    printf '# dry run: nothing below has been run; checks assume nothing exists yet\n'
  fi

  run gcloud services enable "${APIS[@]}" --project="$PROJECT"

  ensure_service_account "$runtime_sa" "Training metrics ingestion function (runtime)"
  ensure_service_account "$trigger_sa" "Training metrics ingestion function (Eventarc trigger)"

  # Runtime: the password secret (this secret only), Cloud SQL client (this
  # instance only), and reading the bucket's objects by name (this bucket only;
  # storage.objects.get without list: the event names the object).
  run gcloud secrets add-iam-policy-binding "$secret" --project="$PROJECT" \
    --member="serviceAccount:$runtime_sa" --role=roles/secretmanager.secretAccessor
  grant_cloudsql_client "$runtime_sa"
  run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
    --member="serviceAccount:$runtime_sa" --role="$FUNCTION_BUCKET_ROLE"
  # An earlier deploy granted objectViewer (get and list): take it back.
  # (gcloud storage buckets get-iam-policy has no --filter: the bindings are matched here.)
  local bindings
  bindings=$(current gcloud storage buckets get-iam-policy "gs://$BUCKET" --flatten='bindings[].members' \
    --format='csv[no-heading](bindings.role,bindings.members)')
  if [[ $'\n'$bindings$'\n' == *$'\n'"roles/storage.objectViewer,serviceAccount:$runtime_sa"$'\n'* ]]; then
    run gcloud storage buckets remove-iam-policy-binding "gs://$BUCKET" \
      --member="serviceAccount:$runtime_sa" --role=roles/storage.objectViewer
  fi

  # Trigger: receive Eventarc events (the invoker grant on the function follows the deploy).
  run gcloud projects add-iam-policy-binding "$PROJECT" \
    --member="serviceAccount:$trigger_sa" --role=roles/eventarc.eventReceiver --condition=None

  # Cloud Storage publishes the finalize events to Pub/Sub for Eventarc.
  agent=$(lookup GCS_SERVICE_AGENT gcloud storage service-agent --project="$PROJECT")
  run gcloud projects add-iam-policy-binding "$PROJECT" \
    --member="serviceAccount:$agent" --role=roles/pubsub.publisher --condition=None

  # A Cloud Storage trigger must live where the bucket lives.
  location=$BUCKET_LOCATION
  if [[ -z $location ]]; then
    location=$(lookup BUCKET_LOCATION gcloud storage buckets describe "gs://$BUCKET" --format='value(location)')
  fi
  # Eventarc locations are lowercase; the bucket reports e.g. EUROPE-CENTRAL2.
  [[ $location == BUCKET_LOCATION ]] || location=${location,,}

  # No password here: libpq reads PGPASSWORD, which comes from Secret Manager.
  database_url="host=/cloudsql/$INSTANCE dbname=$DB_NAME user=$DB_USER"
  env_vars="DATABASE_URL=$database_url,QUICKTEST_TABLE=$QUICKTEST_TABLE,METRICS_FILENAME=$METRICS_FILENAME"
  env_vars+=",MAX_METRICS_BYTES=$MAX_METRICS_BYTES,MEMORY_BUDGET_BYTES=$(memory_budget_bytes "$MEMORY")"
  env_vars+=",DB_POOL_SIZE=$DB_POOL_SIZE,MAX_EVENT_AGE=$MAX_EVENT_AGE"
  env_vars+=",PGAPPNAME=$FUNCTION_NAME,PGCONNECT_TIMEOUT=10"

  run gcloud functions deploy "$FUNCTION_NAME" --gen2 --project="$PROJECT" --region="$REGION" \
    --runtime="$RUNTIME" --source="$SOURCE_DIR" --entry-point="$ENTRY_POINT" \
    --trigger-event-filters="type=$EVENT_TYPE" --trigger-event-filters="bucket=$BUCKET" \
    --trigger-location="$location" --trigger-service-account="$trigger_sa" --retry \
    --service-account="$runtime_sa" --no-allow-unauthenticated --ingress-settings=internal-only \
    --memory="$MEMORY" --cpu="$CPU" --timeout="$TIMEOUT" --concurrency="$CONCURRENCY" \
    --max-instances="$MAX_INSTANCES" --set-env-vars="$env_vars" \
    --set-secrets="PGPASSWORD=$secret:$secret_version"

  # Only the trigger's identity may invoke the function (run.invoker on it alone).
  run gcloud functions add-invoker-policy-binding "$FUNCTION_NAME" --project="$PROJECT" \
    --region="$REGION" --member="serviceAccount:$trigger_sa"

  # gcloud functions deploy has no Cloud SQL flag: a gen2 function's Cloud SQL
  # socket (/cloudsql/CONNECTION) is configured on its Cloud Run service, and
  # later deploys keep it.
  local attached
  attached=$(current gcloud run services describe "$FUNCTION_NAME" --project="$PROJECT" \
    --region="$REGION" --format="value(spec.template.metadata.annotations.'run.googleapis.com/cloudsql-instances')")
  if [[ ",$attached," == *",$INSTANCE,"* ]]; then
    note "Cloud SQL connection $INSTANCE already attached"
  else
    run gcloud run services update "$FUNCTION_NAME" --project="$PROJECT" --region="$REGION" \
      --add-cloudsql-instances="$INSTANCE"
  fi

  configure_dead_letter "$location"

  if [[ $DRY_RUN == 0 ]]; then
    note "deployed $FUNCTION_NAME: gs://$BUCKET uploads of */$METRICS_FILENAME are ingested into $DB_NAME.$QUICKTEST_TABLE"
  fi

  [[ $NO_RECONCILE == 1 ]] || deploy_reconcile "$database_url" "$secret:$secret_version"
  [[ $NO_ALERTS == 1 ]] || deploy_alerts
}

# configure_dead_letter TRIGGER_LOCATION: a dead-letter topic on the Pub/Sub
# subscription Eventarc made for the function's trigger, so that an event that
# exhausts --max-delivery-attempts is kept (NAME-hold, 7 days) instead of being
# dropped after Eventarc's 24 hours; the Pub/Sub service agent may publish to the
# topic and acknowledge on the subscription. Re-runs converge: the topic and its
# subscription are created once, the bindings and the policy set again;
# --no-dead-letter clears a policy an earlier deploy set.
configure_dead_letter() {
  local location=$1 trigger subscription topic=$DEAD_LETTER_TOPIC number agent policy
  trigger=$(lookup EVENTARC_TRIGGER gcloud functions describe "$FUNCTION_NAME" --gen2 --project="$PROJECT" \
    --region="$REGION" --format='value(eventTrigger.trigger)')
  subscription=$(lookup TRIGGER_SUBSCRIPTION gcloud eventarc triggers describe "${trigger##*/}" \
    --project="$PROJECT" --location="$location" --format='value(transport.pubsub.subscription)')
  if [[ $NO_DEAD_LETTER == 1 ]]; then
    policy=$(current gcloud pubsub subscriptions describe "$subscription" --project="$PROJECT" \
      --format='value(deadLetterPolicy.deadLetterTopic)')
    if [[ -n $policy ]]; then
      run gcloud pubsub subscriptions update "$subscription" --project="$PROJECT" --clear-dead-letter-policy
    fi
    return 0
  fi
  if ! exists gcloud pubsub topics list --project="$PROJECT" --filter="name=projects/$PROJECT/topics/$topic" \
    --format='value(name)'; then
    run gcloud pubsub topics create "$topic" --project="$PROJECT"
  fi
  # A topic drops what no subscription holds: this one keeps dead letters for the runbook.
  if ! exists gcloud pubsub subscriptions list --project="$PROJECT" \
    --filter="name=projects/$PROJECT/subscriptions/$topic-hold" --format='value(name)'; then
    run gcloud pubsub subscriptions create "$topic-hold" --project="$PROJECT" --topic="$topic" \
      --message-retention-duration=7d --expiration-period=never
  fi
  number=$(lookup PROJECT_NUMBER gcloud projects describe "$PROJECT" --format='value(projectNumber)')
  agent="service-$number@gcp-sa-pubsub.iam.gserviceaccount.com"
  run gcloud pubsub topics add-iam-policy-binding "$topic" --project="$PROJECT" \
    --member="serviceAccount:$agent" --role=roles/pubsub.publisher
  run gcloud pubsub subscriptions add-iam-policy-binding "$subscription" --project="$PROJECT" \
    --member="serviceAccount:$agent" --role=roles/pubsub.subscriber
  run gcloud pubsub subscriptions update "$subscription" --project="$PROJECT" \
    --dead-letter-topic="projects/$PROJECT/topics/$topic" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"
}

# grant_cloudsql_client EMAIL: roles/cloudsql.client on the one instance only,
# by an IAM condition on its resource name (connecting through the /cloudsql
# socket calls instance-scoped methods only, so the condition holds). The
# binding lives in the instance's project. An unconditional grant an earlier
# deploy left (project-wide: every instance, MLflow's included) is removed.
grant_cloudsql_client() {
  local member="serviceAccount:$1" sql_project=${INSTANCE%%:*} instance_id=${INSTANCE##*:}
  local expression="resource.name == \"projects/$sql_project/instances/$instance_id\""
  expression+=" && resource.type == \"sqladmin.googleapis.com/Instance\""
  run gcloud projects add-iam-policy-binding "$sql_project" --member="$member" --role=roles/cloudsql.client \
    --condition="expression=$expression,title=only $instance_id"
  if exists gcloud projects get-iam-policy "$sql_project" --flatten='bindings[].members' \
    --filter="bindings.role=roles/cloudsql.client AND bindings.members=$member AND NOT bindings.condition:*" \
    --format='value(bindings.role)'; then
    run gcloud projects remove-iam-policy-binding "$sql_project" --member="$member" \
      --role=roles/cloudsql.client --condition=None
  fi
}

# --- reconciliation: a Cloud Run Job, nightly by Cloud Scheduler ------------------

# deploy_reconcile DATABASE_URL SECRET:VERSION
deploy_reconcile() {
  local database_url=$1 secret_ref=$2 job_sa scheduler_sa target env_vars args verb
  local scheduler_job="$RECONCILE_JOB-nightly"
  job_sa=$(sa_email "$RECONCILE_SA")
  scheduler_sa=$(sa_email "$SCHEDULER_SA")
  ensure_service_account "$job_sa" "Training metrics reconciliation job (runtime)"
  ensure_service_account "$scheduler_sa" "Training metrics reconciliation (Cloud Scheduler)"

  # The job: that secret, that instance, and get + list on that bucket (it lists).
  run gcloud secrets add-iam-policy-binding "${secret_ref%%:*}" --project="$PROJECT" \
    --member="serviceAccount:$job_sa" --role=roles/secretmanager.secretAccessor
  grant_cloudsql_client "$job_sa"
  run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
    --member="serviceAccount:$job_sa" --role=roles/storage.objectViewer

  target="gs://$BUCKET"
  [[ -z $RECONCILE_PREFIX ]] || target+="/$RECONCILE_PREFIX"
  env_vars="DATABASE_URL=$database_url,QUICKTEST_TABLE=$QUICKTEST_TABLE,METRICS_FILENAME=$METRICS_FILENAME"
  env_vars+=",MAX_METRICS_BYTES=$MAX_METRICS_BYTES,MEMORY_BUDGET_BYTES=$(memory_budget_bytes "$RECONCILE_MEMORY")"
  env_vars+=",PGAPPNAME=$RECONCILE_JOB,PGCONNECT_TIMEOUT=10"
  # The image's entry point is `python -m metrics_ingest` (Dockerfile); --verbose
  # logs each object's JSON line, which the log-based metric counts.
  args="replay,$target,--since,$RECONCILE_SINCE,--workers,$RECONCILE_WORKERS,--verbose"
  # Create-or-update; each task replays its shard (CLOUD_RUN_TASK_INDEX of CLOUD_RUN_TASK_COUNT).
  run gcloud run jobs deploy "$RECONCILE_JOB" --project="$PROJECT" --region="$REGION" \
    --source="$RECONCILE_SOURCE" --tasks="$RECONCILE_TASKS" --parallelism="$RECONCILE_TASKS" \
    --task-timeout=3600s --max-retries=1 --memory="$RECONCILE_MEMORY" --cpu=1 \
    --service-account="$job_sa" --set-cloudsql-instances="$INSTANCE" \
    --set-secrets="PGPASSWORD=$secret_ref" --set-env-vars="$env_vars" --args="$args" --quiet

  # The scheduler's account may run this job and nothing else.
  run gcloud run jobs add-iam-policy-binding "$RECONCILE_JOB" --project="$PROJECT" --region="$REGION" \
    --member="serviceAccount:$scheduler_sa" --role=roles/run.invoker
  # Cloud Scheduler has no create-or-update: update what exists, else create.
  verb=create
  if exists gcloud scheduler jobs list --project="$PROJECT" --location="$REGION" \
    --filter="name=projects/$PROJECT/locations/$REGION/jobs/$scheduler_job" --format='value(name)'; then
    verb=update
  fi
  run gcloud scheduler jobs "$verb" http "$scheduler_job" --project="$PROJECT" --location="$REGION" \
    --schedule="$SCHEDULE" --time-zone="$TIME_ZONE" \
    --uri="https://run.googleapis.com/v2/projects/$PROJECT/locations/$REGION/jobs/$RECONCILE_JOB:run" \
    --http-method=POST --oauth-service-account-email="$scheduler_sa" --attempt-deadline=180s

  if [[ $DRY_RUN == 0 ]]; then
    note "reconciliation: $RECONCILE_JOB replays $target --since $RECONCILE_SINCE in $RECONCILE_TASKS task(s), at '$SCHEDULE' ($TIME_ZONE)"
  fi
}

# --- alerts: a log-based metric of outcomes, three alert policies ----------------------

# json_string TEXT: TEXT as a JSON string (settings are validated: no control characters but newlines).
json_string() {
  local text=${1//\\/\\\\}
  text=${text//\"/\\\"}
  text=${text//$'\n'/\\n}
  printf '"%s"' "$text"
}

# threshold_condition NAME FILTER ALIGNMENT THRESHOLD DURATION: one conditionThreshold, as JSON.
threshold_condition() {
  cat <<EOF
    {
      "displayName": $(json_string "$1"),
      "conditionThreshold": {
        "filter": $(json_string "$2"),
        "aggregations": [{"alignmentPeriod": "$3", "perSeriesAligner": "ALIGN_SUM", "crossSeriesReducer": "REDUCE_SUM"}],
        "comparison": "COMPARISON_GT",
        "thresholdValue": $4,
        "duration": "$5",
        "trigger": {"count": 1}
      }
    }
EOF
}

# policy_json DISPLAY_NAME SEVERITY DOCUMENTATION CONDITION_JSON...
policy_json() {
  local display=$1 severity=$2 doc=$3 channels="" joined="" condition
  shift 3
  for condition in "$@"; do
    joined+="${joined:+,
}$condition"
  done
  [[ -z $NOTIFICATION_CHANNEL ]] || channels="\"notificationChannels\": [$(json_string "$NOTIFICATION_CHANNEL")],"
  cat <<EOF
{
  "displayName": $(json_string "$display"),
  "documentation": {"content": $(json_string "$doc"), "mimeType": "text/markdown"},
  "severity": "$severity",
  "combiner": "OR",
  "enabled": true,
  $channels
  "alertStrategy": {"autoClose": "604800s"},
  "conditions": [
$joined
  ]
}
EOF
}

# run_policy ARGS...: like run, but waits while a log metric created moments ago is
# not yet visible to alerting ("Cannot find metric(s)", up to ~10 minutes).
run_policy() {
  if [[ $DRY_RUN == 1 ]]; then
    run "$@"
    return 0
  fi
  local try output
  for ((try = 1; ; try++)); do
    note "+ $(quoted "$@")"
    if output=$("$@" 2>&1); then
      [[ -z $output ]] || note "$output"
      return 0
    fi
    if [[ $output != *"Cannot find metric"* ]] || ((try >= 12)); then
      note "$output"
      note "$PROG: this command failed: $(quoted "$@")"
      exit 1
    fi
    note "the log metric is not visible to alerting yet (try $try of 12); waiting ${METRIC_WAIT_SECONDS}s"
    sleep "$METRIC_WAIT_SECONDS"
  done
}

# apply_policy FILE: update the policy with the file's displayName, else create it.
apply_policy() {
  local file=$1 display existing
  display=$(sed -n 's/^  "displayName": "\(.*\)",$/\1/p' "$file")
  existing=$(current gcloud alpha monitoring policies list --project="$PROJECT" \
    --filter="displayName=\"$display\"" --format='value(name)')
  if [[ -n $existing ]]; then
    run_policy gcloud alpha monitoring policies update "${existing%%$'\n'*}" --project="$PROJECT" \
      --policy-from-file="$file"
  else
    run_policy gcloud alpha monitoring policies create --project="$PROJECT" --policy-from-file="$file"
  fi
}

deploy_alerts() {
  local metric=${FUNCTION_NAME//-/_}_outcomes logs_filter ingest_metric doc
  if [[ -z $CONFIG_DIR ]]; then
    CONFIG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/metrics-ingest-deploy.XXXXXX")
  fi
  mkdir -p "$CONFIG_DIR"
  [[ $DRY_RUN == 1 ]] && printf '# monitoring files written to %s (read them; nothing was sent)\n' "$CONFIG_DIR"

  # Every JSON log line with an outcome, from the function and from the job.
  logs_filter="resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"$FUNCTION_NAME\""
  if [[ $NO_RECONCILE == 0 ]]; then
    logs_filter="(($logs_filter) OR (resource.type=\"cloud_run_job\" AND resource.labels.job_name=\"$RECONCILE_JOB\"))"
  fi
  logs_filter+=" AND jsonPayload.outcome:*"
  cat >"$CONFIG_DIR/log-metric.json" <<EOF
{
  "name": $(json_string "$metric"),
  "description": $(json_string "Training metrics ingestion outcomes (ingested, duplicate, superseded, no_matching_row, rejected, unchanged, expired, retry, error) logged by $FUNCTION_NAME and its reconciliation job"),
  "filter": $(json_string "$logs_filter"),
  "metricDescriptor": {
    "metricKind": "DELTA",
    "valueType": "INT64",
    "unit": "1",
    "labels": [{"key": "outcome", "valueType": "STRING", "description": "the ingestion outcome"}]
  },
  "labelExtractors": {"outcome": "EXTRACT(jsonPayload.outcome)"}
}
EOF
  if exists gcloud logging metrics list --project="$PROJECT" --filter="name=$metric" --format='value(name)'; then
    run gcloud logging metrics update "$metric" --project="$PROJECT" --config-from-file="$CONFIG_DIR/log-metric.json"
  else
    run gcloud logging metrics create "$metric" --project="$PROJECT" --config-from-file="$CONFIG_DIR/log-metric.json"
  fi

  ingest_metric="metric.type=\"logging.googleapis.com/user/$metric\""
  local function_resource="resource.type=\"cloud_run_revision\"" job_resource="resource.type=\"cloud_run_job\""
  local -a rejected=() retries=()
  rejected+=("$(threshold_condition "$FUNCTION_NAME: rejected or error" \
    "$ingest_metric AND $function_resource AND metric.label.outcome=one_of(\"rejected\",\"error\")" 300s 0 0s)")
  retries+=("$(threshold_condition "$FUNCTION_NAME: retries above 5 per 5 minutes for 30 minutes" \
    "$ingest_metric AND $function_resource AND metric.label.outcome=\"retry\"" 300s 5 1800s)")
  if [[ $NO_RECONCILE == 0 ]]; then
    rejected+=("$(threshold_condition "$RECONCILE_JOB: rejected or error" \
      "$ingest_metric AND $job_resource AND metric.label.outcome=one_of(\"rejected\",\"error\")" 300s 0 0s)")
  fi
  doc="A training_metrics.json was rejected (the file is bad: the log line's reason says why) or ingestion hit an unexpected error (a bug: the event is retried).
First: in Logs Explorer, query jsonPayload.outcome=(\"rejected\" OR \"error\") for these resources; read the reason and the object. Fix the file and upload it again (a new generation is ingested), or for an error, read the exception and report it."
  policy_json "$FUNCTION_NAME: files rejected or ingestion errors" ERROR "$doc" "${rejected[@]}" \
    >"$CONFIG_DIR/alert-rejected-or-error.json"
  doc="Events keep failing with transient faults (database or GCS unreachable, a bad setting such as QUICKTEST_TABLE) and Eventarc keeps redelivering them; after 24 hours it drops them.
First: query jsonPayload.outcome=\"retry\" in Logs Explorer and read the message (it names the fault). Fix the cause; once it is fixed the retries succeed, and the nightly reconciliation catches anything Eventarc dropped."
  policy_json "$FUNCTION_NAME: sustained ingestion retries" WARNING "$doc" "${retries[@]}" \
    >"$CONFIG_DIR/alert-retry-rate.json"
  apply_policy "$CONFIG_DIR/alert-rejected-or-error.json"
  apply_policy "$CONFIG_DIR/alert-retry-rate.json"

  if [[ $NO_RECONCILE == 0 ]]; then
    doc="An execution of the nightly reconciliation job $RECONCILE_JOB failed: a task exited non-zero (a file rejected or failed, or the job could not start: database, credentials, listing).
First: open the execution in Cloud Run > Jobs > $RECONCILE_JOB and read the failed task's log: the summary lists every rejected or failed object with its reason. Rerun by hand with gcloud run jobs execute $RECONCILE_JOB --region $REGION once the cause is fixed."
    policy_json "$RECONCILE_JOB: reconciliation execution failed" ERROR "$doc" \
      "$(threshold_condition "$RECONCILE_JOB: failed executions" \
        "metric.type=\"run.googleapis.com/job/completed_execution_count\" AND $job_resource AND resource.label.job_name=\"$RECONCILE_JOB\" AND metric.label.result=\"failed\"" \
        300s 0 0s)" >"$CONFIG_DIR/alert-reconcile-failed.json"
    apply_policy "$CONFIG_DIR/alert-reconcile-failed.json"
  fi

  if [[ $NO_DEAD_LETTER == 0 ]]; then
    local hold="$DEAD_LETTER_TOPIC-hold" condition
    doc="An event exhausted its $MAX_DELIVERY_ATTEMPTS delivery attempts and waits in the dead-letter subscription $hold (kept 7 days): the function could not answer it at all (a crash, out of memory, a timeout, a configuration error).
First: pull it without acknowledging (gcloud pubsub subscriptions pull $hold --project $PROJECT --limit 10 --format=json), read the object it names, fix the cause, replay that object (metrics-ingest replay gs://BUCKET/FOLDER), then acknowledge the message. The runbook: docs/operations.md, Dead letters."
    condition=$(cat <<EOF
    {
      "displayName": $(json_string "$hold: undelivered messages"),
      "conditionThreshold": {
        "filter": $(json_string "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=\"$hold\""),
        "aggregations": [{"alignmentPeriod": "300s", "perSeriesAligner": "ALIGN_MAX", "crossSeriesReducer": "REDUCE_SUM"}],
        "comparison": "COMPARISON_GT",
        "thresholdValue": 0,
        "duration": "0s",
        "trigger": {"count": 1}
      }
    }
EOF
)
    policy_json "$FUNCTION_NAME: dead-lettered events" ERROR "$doc" "$condition" >"$CONFIG_DIR/alert-dead-letter.json"
    apply_policy "$CONFIG_DIR/alert-dead-letter.json"
  fi
  [[ $DRY_RUN == 1 ]] || note "alerts: log metric $metric and the alert policies are in place (files in $CONFIG_DIR)"
}

# --- teardown-mlflow -----------------------------------------------------------------

# The rows whose history only MLflow still holds: an MLflow run id and no
# training_history_json. A row whose loss an operator accepted
# (`metrics-ingest export-mlflow --accept-loss`, recorded in
# mlflow_export_decisions for the row's current run id, not superseded) is
# listed apart as "accepted". psql quotes the names (:"schema".:"table"); an
# unqualified table is found through the search path. Read-only: SELECTs only.
AT_RISK_SQL="SELECT to_regclass('mlflow_export_decisions') IS NOT NULL AS has_decisions \gset
\if :has_decisions
SELECT CASE WHEN d.id IS NULL THEN 'risk' ELSE 'accepted' END, q.id, q.mlflow_run_id, q.gcs_artifacts_path,
       coalesce(d.decided_by, ''), coalesce(to_char(d.decided_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), ''),
       coalesce(regexp_replace(d.reason, '[[:space:]]+', ' ', 'g'), '')
FROM QUICKTEST_TABLE q
LEFT JOIN LATERAL (SELECT * FROM mlflow_export_decisions x
                   WHERE x.quicktest_id = q.id AND x.mlflow_run_id = btrim(q.mlflow_run_id) AND x.superseded_at IS NULL
                   ORDER BY x.id DESC LIMIT 1) d ON true
WHERE btrim(coalesce(q.mlflow_run_id, '')) <> ''
  AND (q.training_history_json IS NULL OR q.training_history_json IN ('null'::jsonb, '{}'::jsonb))
ORDER BY q.id;
\else
SELECT 'risk', id, mlflow_run_id, gcs_artifacts_path, '', '', '' FROM QUICKTEST_TABLE
WHERE btrim(coalesce(mlflow_run_id, '')) <> ''
  AND (training_history_json IS NULL OR training_history_json IN ('null'::jsonb, '{}'::jsonb))
ORDER BY id;
\endif"

# psql's own error, safe to show: a malformed connection string is quoted back
# by libpq (and a password with it), so any quoted token and any password=
# value is masked, and only the first line is kept.
redact_psql_error() {
  sed -E -e 's/^psql: //' -e 's/"[^"]*"/"..."/g' -e "s/'[^']*'/'...'/g" -e 's/(password=)[^ &]*/\1***/g' \
    -e 's#(://[^:/@]*:)[^@]*@#\1***@#g' | head -n 1
}

at_risk_rows() {
  local conn=() schema='' qualified=':"table"' err status
  if [[ $QUICKTEST_TABLE == *.* ]]; then
    schema=${QUICKTEST_TABLE%%.*}
    qualified=':"schema".:"table"'
  fi
  [[ -n $DATABASE_URL_SETTING ]] && conn=(--dbname="$DATABASE_URL_SETTING")
  if ! command -v psql >/dev/null 2>&1; then
    note "$PROG: psql not found on PATH: it is needed to check the QuickTest rows before deleting MLflow"
    return 1
  fi
  err=$(mktemp)
  status=0
  psql "${conn[@]}" --no-psqlrc --quiet --tuples-only --no-align --field-separator=$'\t' \
    --set=ON_ERROR_STOP=1 --set=schema="$schema" --set=table="${QUICKTEST_TABLE#*.}" \
    <<<"${AT_RISK_SQL//QUICKTEST_TABLE/$qualified}" 2>"$err" || status=$?
  if [[ $status != 0 ]]; then
    note "$PROG: psql: $(redact_psql_error <"$err")"
  fi
  rm -f "$err"
  return "$status"
}

# check_rows: the same read-only check for the real teardown and its dry run.
# Refuses (exit 1) while a row is at risk or the check cannot run, unless --force.
check_rows() {
  local rows risk accepted count
  if ! rows=$(at_risk_rows); then
    if [[ $FORCE == 1 ]]; then
      note "$PROG: WARNING: could not check the QuickTest rows; going on because of --force"
      return 0
    fi
    note "$PROG: could not check the QuickTest rows (set DATABASE_URL or PG* variables, and put psql on PATH); nothing deleted"
    exit 1
  fi
  risk=$(printf '%s\n' "$rows" | awk -F '\t' '$1 == "risk" { print $2 "\t" $3 "\t" $4 }')
  accepted=$(printf '%s\n' "$rows" | awk -F '\t' '$1 == "accepted" { print $2 "\t" $3 "\t" $4 "\taccepted by " $5 " at " $6 " UTC: " $7 }')
  if [[ -n $accepted ]]; then
    count=$(printf '%s\n' "$accepted" | wc -l)
    note "$count QuickTest row(s) have no history but an accepted loss (export-mlflow --accept-loss); not at risk:"
    printf '%s\n' "$accepted" | sed 's/^/  /' >&2
  fi
  if [[ -n $risk ]]; then
    count=$(printf '%s\n' "$risk" | wc -l)
    note "$count QuickTest row(s) have an MLflow run id but no training_history_json;"
    note "their history exists only in MLflow (export it, or accept the loss, first):"
    note "  id	mlflow_run_id	gcs_artifacts_path"
    printf '%s\n' "$risk" | sed 's/^/  /' >&2
    if [[ $FORCE == 0 ]]; then
      note "$PROG: refusing to delete MLflow while these rows depend on it (use --force to delete anyway); nothing deleted"
      exit 1
    fi
    note "$PROG: WARNING: deleting anyway (--force)"
  else
    note "no QuickTest row depends on MLflow any more"
  fi
}

do_teardown() {
  local trigger_region=$MLFLOW_BUILD_TRIGGER_REGION
  note "teardown-mlflow will delete, in project $PROJECT:"
  note "  Cloud Run service    $MLFLOW_SERVICE ($REGION)"
  note "  Cloud SQL instance   $MLFLOW_SQL_INSTANCE (a final backup is kept $FINAL_BACKUP_DAYS days)"
  note "  Cloud Build trigger  $MLFLOW_BUILD_TRIGGER ($trigger_region)"
  [[ -n $MLFLOW_SERVICE_ACCOUNT ]] && note "  service account      $MLFLOW_SERVICE_ACCOUNT"

  # The dry run runs the same read-only check: it is what an operator runs to see whether teardown is safe.
  check_rows
  if [[ $DRY_RUN == 1 ]]; then
    printf '# dry run: nothing below has been run (the QuickTest check above was)\n'
  elif [[ $YES == 0 ]]; then
    note "nothing deleted: re-run with --yes to delete the resources above"
    exit 0
  fi

  if exists_or_dry "Cloud Run service $MLFLOW_SERVICE" gcloud run services list --project="$PROJECT" --region="$REGION" \
    --filter="metadata.name=$MLFLOW_SERVICE" --format='value(metadata.name)'; then
    run gcloud run services delete "$MLFLOW_SERVICE" --project="$PROJECT" --region="$REGION" --quiet
  fi
  # Deleting an instance deletes its automated backups: keep a final one (the plan's rollback restores it).
  if exists_or_dry "Cloud SQL instance $MLFLOW_SQL_INSTANCE" gcloud sql instances list --project="$PROJECT" \
    --filter="name=$MLFLOW_SQL_INSTANCE" --format='value(name)'; then
    run gcloud sql instances delete "$MLFLOW_SQL_INSTANCE" --project="$PROJECT" --enable-final-backup \
      --final-backup-retention-days="$FINAL_BACKUP_DAYS" --quiet
  fi
  if exists_or_dry "Cloud Build trigger $MLFLOW_BUILD_TRIGGER" gcloud builds triggers list --project="$PROJECT" --region="$trigger_region" \
    --filter="name=$MLFLOW_BUILD_TRIGGER" --format='value(name)'; then
    run gcloud builds triggers delete "$MLFLOW_BUILD_TRIGGER" --project="$PROJECT" \
      --region="$trigger_region" --quiet
  fi
  if [[ -n $MLFLOW_SERVICE_ACCOUNT ]] && exists_or_dry "service account $MLFLOW_SERVICE_ACCOUNT" \
    gcloud iam service-accounts list --project="$PROJECT" \
    --filter="email=$MLFLOW_SERVICE_ACCOUNT" --format='value(email)'; then
    run gcloud iam service-accounts delete "$MLFLOW_SERVICE_ACCOUNT" --project="$PROJECT" --quiet
  fi
  [[ $DRY_RUN == 1 ]] || note "MLflow infrastructure deleted"
}

# exists_or_dry LABEL ARGS...: before a delete: does the resource exist? A dry
# run prints the check and assumes it does, so that the delete is printed too.
exists_or_dry() {
  local label=$1
  shift
  if [[ $DRY_RUN == 1 ]]; then
    printf '# check (not run in --dry-run; assumed present): %s\n' "$(quoted "$@")"
    return 0
  fi
  if exists "$@"; then
    return 0
  fi
  note "already gone: $label"
  return 1
}

case $ACTION in
  deploy) do_deploy ;;
  teardown-mlflow) do_teardown ;;
esac
