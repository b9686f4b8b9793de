#!/usr/bin/env bash
# deploy.sh: deploy the training-metrics ingestion function to Google Cloud, and
# (subcommand teardown-mlflow) remove the MLflow infrastructure it replaces.
#
# Idempotent: re-running it converges to the same state (existence is checked
# before anything is created; IAM bindings and the function deploy are
# declarative). --dry-run prints every command, shell-quoted, and runs none.
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
  iam.googleapis.com logging.googleapis.com
)

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
  --source DIR                 DEPLOY_SOURCE: default $SCRIPT_DIR/functions
  --dry-run                    DEPLOY_DRY_RUN=1: print the commands, run none, need no credentials

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
  --dry-run                    DEPLOY_DRY_RUN=1: print the commands, run none (no database check)

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
DEPLOY_FLAGS+=" --metrics-filename --memory --cpu --timeout --concurrency --max-instances --source --dry-run "
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
    --dry-run | --yes | --force)
      [[ $arg == *=* ]] && die_usage "$name takes no value"
      case $name in
        --dry-run) DRY_RUN=1 ;;
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

readonly RE_PROJECT='^[a-z][-a-z0-9]{4,28}[a-z0-9]$'
readonly RE_REGION='^[a-z]+-[a-z]+[0-9]+$'
readonly RE_SA='^([a-z][-a-z0-9]{4,28}[a-z0-9]|[a-z][-a-z0-9]{4,28}[a-z0-9]@[-a-z0-9.]+\.gserviceaccount\.com)$'
readonly RE_IDENT='^[A-Za-z_][A-Za-z0-9_]{0,62}$'
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
  check "$QUICKTEST_TABLE" "$RE_IDENT" --quicktest-table DEPLOY_QUICKTEST_TABLE "a plain table name"
  check "$METRICS_FILENAME" '^[A-Za-z0-9_.-]+$' --metrics-filename DEPLOY_METRICS_FILENAME "a file base name"
  check "$MEMORY" '^[1-9][0-9]*(Mi|Gi|M|G|MB|GB)$' --memory DEPLOY_MEMORY "a size such as 512Mi or 1Gi"
  check "$CPU" '^([1-9][0-9]*|0?\.[0-9]+|[1-9][0-9]*\.[0-9]+)$' --cpu DEPLOY_CPU "a number of CPUs such as 1 or 0.5"
  check "$TIMEOUT" '^[1-9][0-9]*s$' --timeout DEPLOY_TIMEOUT "a duration in seconds such as 300s"
  check "$CONCURRENCY" "$RE_POSITIVE" --concurrency DEPLOY_CONCURRENCY "a positive integer"
  check "$MAX_INSTANCES" "$RE_POSITIVE" --max-instances DEPLOY_MAX_INSTANCES "a positive integer"
  if [[ $CONCURRENCY =~ $RE_POSITIVE && $CONCURRENCY -gt 1 && $CPU =~ ^0?\.[0-9]+$ ]]; then
    ERRORS+=("--concurrency (DEPLOY_CONCURRENCY) above 1 needs --cpu (DEPLOY_CPU) of at least 1; got cpu '$CPU'")
  fi
  if [[ -n $SOURCE_DIR && ! -f $SOURCE_DIR/main.py ]]; then
    ERRORS+=("--source (DEPLOY_SOURCE) must be the function's folder with main.py; none in '$SOURCE_DIR'")
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
  check "$QUICKTEST_TABLE" "$RE_IDENT" --quicktest-table DEPLOY_QUICKTEST_TABLE "a plain table name"
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

sa_email() {
  if [[ $1 == *@* ]]; then
    printf '%s' "$1"
  else
    printf '%s@%s.iam.gserviceaccount.com' "$1" "$PROJECT"
  fi
}

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

  # Runtime: the password secret (this secret only), Cloud SQL client, and read
  # access to the bucket's objects (this bucket only).
  run gcloud secrets add-iam-policy-binding "$secret" --project="$PROJECT" \
    --member="serviceAccount:$runtime_sa" --role=roles/secretmanager.secretAccessor
  run gcloud projects add-iam-policy-binding "$PROJECT" \
    --member="serviceAccount:$runtime_sa" --role=roles/cloudsql.client --condition=None
  run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
    --member="serviceAccount:$runtime_sa" --role=roles/storage.objectViewer

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

  if [[ $DRY_RUN == 0 ]]; then
    note "deployed $FUNCTION_NAME: gs://$BUCKET uploads of */$METRICS_FILENAME are ingested into $DB_NAME.$QUICKTEST_TABLE"
  fi
}

# --- teardown-mlflow -----------------------------------------------------------------

# The rows whose history only MLflow still holds: an MLflow run id and no
# training_history_json. psql quotes the table name (:"table").
AT_RISK_SQL="SELECT id, mlflow_run_id, gcs_artifacts_path FROM :\"table\"
WHERE btrim(coalesce(mlflow_run_id, '')) <> ''
  AND (training_history_json IS NULL OR training_history_json IN ('null'::jsonb, '{}'::jsonb))
ORDER BY id;"

at_risk_rows() {
  local conn=()
  [[ -n $DATABASE_URL_SETTING ]] && conn=(--dbname="$DATABASE_URL_SETTING")
  if ! command -v psql >/dev/null 2>&1; then
    note "$PROG: psql not found on PATH: it is needed to check the QuickTest rows before deleting MLflow"
    return 1
  fi
  psql "${conn[@]}" --no-psqlrc --quiet --tuples-only --no-align --field-separator=$'\t' \
    --set=ON_ERROR_STOP=1 --set=table="$QUICKTEST_TABLE" <<<"$AT_RISK_SQL"
}

do_teardown() {
  local trigger_region=$MLFLOW_BUILD_TRIGGER_REGION
  note "teardown-mlflow will delete, in project $PROJECT:"
  note "  Cloud Run service    $MLFLOW_SERVICE ($REGION)"
  note "  Cloud SQL instance   $MLFLOW_SQL_INSTANCE (a final backup is kept $FINAL_BACKUP_DAYS days)"
  note "  Cloud Build trigger  $MLFLOW_BUILD_TRIGGER ($trigger_region)"
  [[ -n $MLFLOW_SERVICE_ACCOUNT ]] && note "  service account      $MLFLOW_SERVICE_ACCOUNT"

  if [[ $DRY_RUN == 1 ]]; then
    printf '# dry run: nothing below has been run; the QuickTest check (psql, DATABASE_URL) is skipped\n'
  else
    local rows count
    if ! rows=$(at_risk_rows); then
      if [[ $FORCE == 1 ]]; then
        note "$PROG: WARNING: could not check the QuickTest rows; going on because of --force"
        rows=
      else
        note "$PROG: could not check the QuickTest rows (set DATABASE_URL or PG* variables); nothing deleted"
        exit 1
      fi
    fi
    if [[ -n $rows ]]; then
      count=$(printf '%s\n' "$rows" | wc -l)
      note "$count QuickTest row(s) have an MLflow run id but no training_history_json;"
      note "their history exists only in MLflow (replay or export it first):"
      note "  id	mlflow_run_id	gcs_artifacts_path"
      printf '%s\n' "$rows" | sed 's/^/  /' >&2
      if [[ $FORCE == 0 ]]; then
        note "$PROG: refusing to delete MLflow while these rows depend on it (use --force to delete anyway); nothing deleted"
        exit 1
      fi
      note "$PROG: WARNING: deleting anyway (--force)"
    else
      note "no QuickTest row depends on MLflow any more"
    fi
    if [[ $YES == 0 ]]; then
      note "nothing deleted: re-run with --yes to delete the resources above"
      exit 0
    fi
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
