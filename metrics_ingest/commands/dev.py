"""``metrics-ingest dev``: the local stack, running until Ctrl-C.

PostgreSQL from pip (pgserver, Unix socket) with the migrations and the
dev-only platform table, a GCS emulator with a bucket, the function under
functions-framework, and a bridge that turns every upload into the finalize
CloudEvent Eventarc would send. Everything it keeps is in one folder
(``--state-dir``); it prints what to export. Ctrl-C stops every process it
started.

Example::

    $ metrics-ingest dev                       # terminal 1: leave it running
    $ source .metrics-ingest/env.sh            # terminal 2
    $ metrics-ingest dev --add-row             # QuickTest 1: upload to gs://ml-artifacts/quick_tests/1/...
    $ python train.py                          # MetricsCollector("gs://ml-artifacts/quick_tests/1")
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from metrics_ingest.commands import bucket_name, describe, port


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run PostgreSQL, a GCS emulator, the function and the event bridge locally (Ctrl-C stops all)",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state-dir", default=".metrics-ingest", help="the stack's folder (default .metrics-ingest)")
    parser.add_argument("--bucket", type=bucket_name, default="ml-artifacts", help="emulator bucket to create (default ml-artifacts)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--emulator-port", type=port, default=9023, help="GCS emulator port (default 9023; 0: any)")
    parser.add_argument("--function-port", type=port, default=8080, help="function port (default 8080; 0: any)")
    parser.add_argument(
        "--database-url", default=None, help="use this PostgreSQL database instead of starting one with pgserver"
    )
    parser.add_argument(
        "--in-memory", action="store_true", help="keep emulator objects in memory (default: in STATE_DIR/gcs)"
    )
    parser.add_argument(
        "--add-row",
        nargs="?",
        const="",
        metavar="gs://BUCKET/FOLDER",
        help="do not start anything: create a QuickTest row in the running stack's database "
        "($DATABASE_URL, else STATE_DIR/stack.json) and print where to upload (default folder "
        "gs://BUCKET/quick_tests/<id>)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.add_row is not None:
        return _add_row(args)
    from metrics_ingest.localstack.stack import LocalStack, StackError, Steps

    stop = threading.Event()
    # SIGTERM (e.g. from a supervisor) stops as cleanly as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        # While starting, Ctrl-C interrupts (LocalStack.start stops what it started).
        with LocalStack(
            args.state_dir,
            bucket=args.bucket,
            database_url=args.database_url,
            host=args.host,
            emulator_port=args.emulator_port,
            function_port=args.function_port,
            persist_objects=not args.in_memory,
            function_log="-",
            steps=Steps(sys.stdout),
        ) as stack:
            # Once up, Ctrl-C only sets a flag, acted on between polls. A
            # KeyboardInterrupt raised at any bytecode could land inside
            # Popen.poll() after it took its wait lock: stop()'s process.wait()
            # then blocks on that lock for ever (the hang under load). A second
            # Ctrl-C while stopping changes nothing either.
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            env_file = stack.state_dir / "env.sh"
            print(
                f"""
The local stack is up (state in {stack.state_dir}).

Export this in another terminal (or: source {env_file}):
"""
                + "".join(f"  export {k}={_quote(v)}\n" for k, v in stack.env().items())
                + f"""
  function:  {stack.function_url}  (every upload to gs://{stack.bucket} is delivered as a finalize CloudEvent)

Create a QuickTest row to upload to:
  metrics-ingest dev --state-dir {_quote(str(args.state_dir))} --add-row
then write gs://{stack.bucket}/quick_tests/<id>/training_metrics.json (MetricsCollector does) and the row fills itself.
Draw it (with the exports above): metrics-ingest report --quicktest <id> -o report.html   (one offline HTML page)

The function's log lines follow. Ctrl-C stops everything.
""",
                flush=True,
            )
            while not stop.wait(0.5):
                if stack.function is not None and stack.function.poll() is not None:
                    print(f"the function exited with status {stack.function.returncode}", file=sys.stderr)
                    return 1
            print("\nstopping...", flush=True)
    except StackError as exc:
        print(f"metrics-ingest dev: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # during start-up only
        print("\nstopped: PostgreSQL, the emulator, the function and the bridge are down.", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    print("stopped: PostgreSQL, the emulator, the function and the bridge are down.", flush=True)
    return 0


def _add_row(args: argparse.Namespace) -> int:
    import psycopg2

    from ingest.config import Settings
    from metrics_ingest.localstack.stack import create_quicktest, running_stack
    from metrics_ingest.replay import UsageError, parse_gs_uri

    database_url = args.database_url or os.environ.get("DATABASE_URL")
    bucket = args.bucket
    if not database_url:
        stack = running_stack(args.state_dir)
        if stack is None:
            print(
                f"metrics-ingest dev: error: no DATABASE_URL and no running stack in {args.state_dir}; "
                "start `metrics-ingest dev` first",
                file=sys.stderr,
            )
            return 2
        database_url, bucket = stack["DATABASE_URL"], stack.get("METRICS_BUCKET", bucket)
    folder = None
    if args.add_row:
        try:
            target = parse_gs_uri(args.add_row.rstrip("/"))
        except UsageError as exc:
            print(f"metrics-ingest dev: error: {exc}", file=sys.stderr)
            return 2
        folder, bucket = target.uri, target.bucket
    try:
        table = Settings.quicktest_table_from_env()
    except ValueError as exc:
        print(f"metrics-ingest dev: error: {exc}", file=sys.stderr)
        return 2
    try:
        quicktest_id, folder = create_quicktest(database_url, bucket, folder, table=table)
    except psycopg2.Error as exc:
        from ingest.redact import connection_error  # libpq's messages may quote the password

        first = connection_error(exc, database_url, "--database-url" if args.database_url else "DATABASE_URL")
        print(f"metrics-ingest dev: error: cannot create the QuickTest row in table {table!r}: {first}", file=sys.stderr)
        return 1
    print(f"QuickTest {quicktest_id}: upload to {folder}/training_metrics.json")
    return 0


def _quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
