"""``metrics-ingest replay``: backfill or repair a bucket prefix.

Every metrics file under the prefix goes through the Cloud Function's own
code path (``ingest.pipeline.ingest_object``): same validation, idempotency
and generation rules, same records in ``training_metrics_ingestions``.

Example::

    $ export DATABASE_URL=postgresql://... STORAGE_EMULATOR_HOST=...   # or real GCS credentials
    $ metrics-ingest replay gs://ml-artifacts/quick_tests --workers 8 --dry-run
    $ metrics-ingest replay gs://ml-artifacts/quick_tests --workers 8
    $ metrics-ingest replay gs://ml-artifacts/quick_tests/42 --force --json > replay.json
    $ metrics-ingest replay gs://ml-artifacts/quick_tests --since 72h      # the nightly pass
    $ metrics-ingest replay gs://ml-artifacts/quick_tests --shard 0/4      # one of 4 machines

Sharding: --shard I/N takes the objects whose name hashes (CRC32) to I, so N
runs with I = 0..N-1 cover every object exactly once, each listing the prefix
once. Inside a Cloud Run Job task the shard defaults to the task's own
(CLOUD_RUN_TASK_INDEX of CLOUD_RUN_TASK_COUNT). --since DURATION (a whole
number and s, m, h or d: 90s, 72h, 3d) keeps the objects updated within it;
older ones are counted as skipped and never touched.

Before listing, the credentials and the database (reachable, migrated) are
checked once; a problem there is one line on stderr.

Exit status: 0 when nothing was rejected or failed, 1 otherwise (GCS or the
database unreachable included), 2 for a usage error (bad URI or option, no
such bucket, no credentials, DATABASE_URL unset or malformed, migrations not
applied), 130 when interrupted (Ctrl-C; the summary covers what was done).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from metrics_ingest.commands import add_batch_options, describe, pipeline_logs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="ingest every metrics file under gs://BUCKET[/PREFIX] through the function's code path",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("uri", metavar="gs://BUCKET[/PREFIX]", help="bucket and optional object-name prefix")
    parser.add_argument(
        "--shard",
        metavar="I/N",
        default=None,
        help="replay only shard I of N (0-based; default: the Cloud Run Job task's, else everything)",
    )
    parser.add_argument(
        "--since",
        metavar="DURATION",
        default=None,
        help="only objects updated within DURATION (e.g. 90s, 30m, 72h, 3d); default: all",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would happen to each object, write nothing"
    )
    parser.add_argument("--force", action="store_true", help="re-ingest generations already ingested")
    add_batch_options(parser, items="objects", report="every object's outcome")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `metrics-ingest --help` stays instant.
    from ingest.config import Settings

    from metrics_ingest.batch import SetupError, UsageError, check_database, make_storage_client, one_line
    from metrics_ingest.replay import (
        Progress,
        ReplayOptions,
        format_summary,
        parse_duration,
        parse_gs_uri,
        parse_shard,
        run_replay,
        shard_from_env,
    )

    def fail(message: str, status: int) -> int:
        # One line, clipped: an error may quote a whole HTML error page or a SQL excerpt.
        print(f"metrics-ingest replay: error: {one_line(message, 500)}", file=sys.stderr)
        return status

    try:
        settings = Settings.from_env()
        if args.database_url:
            settings = dataclasses.replace(settings, database_url=args.database_url)
        options = ReplayOptions(
            target=parse_gs_uri(args.uri),
            workers=args.workers,
            dry_run=args.dry_run,
            force=args.force,
            settings=settings,
            shard=parse_shard(args.shard) if args.shard is not None else shard_from_env(os.environ),
            since=parse_duration(args.since) if args.since is not None else None,
        )
        # Both checked before listing: one clear message, not one failure per object.
        client = make_storage_client(options.workers)
        check_database(settings)
    except (UsageError, ValueError) as exc:
        return fail(str(exc), 2)
    except SetupError as exc:
        return fail(str(exc), exc.exit_status)

    # Progress always goes to stderr, so stdout carries only the summary (or JSON).
    progress = Progress(sys.stderr, dry_run=args.dry_run)
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as gcs_errors

    target = one_line(options.target.uri, 200)
    scope = f" (shard {options.shard})" if options.shard is not None else ""
    print(f"listing {target}{scope} ...", file=sys.stderr, flush=True)
    try:
        with pipeline_logs(args.verbose):
            report = run_replay(
                options,
                client=client,
                on_outcome=progress.update,
                on_listed=progress.listed,
                on_listing=progress.listing,
            )
    except gcs_errors.NotFound:
        # Only the listing can raise this: ingest_object records a missing object as an outcome.
        return fail(f"no such bucket: gs://{options.target.bucket}", 2)
    except gcs_errors.Forbidden as exc:
        return fail(f"not allowed to list {target} (the account needs storage.objects.list): {exc.message}", 2)
    except gcs_errors.GoogleAPICallError as exc:
        return fail(f"cannot list {target}: {exc}", 1)
    except google.auth.exceptions.GoogleAuthError as exc:  # expired or revoked credentials
        return fail(f"the Google Cloud credentials were refused ({exc}); renew them, e.g. "
                    "`gcloud auth application-default login`", 2)
    except (gcs_errors.RetryError, requests.RequestException) as exc:
        where = os.environ.get("STORAGE_EMULATOR_HOST") or "storage.googleapis.com"
        cause = getattr(exc, "cause", None) or exc
        return fail(f"cannot reach GCS at {where} to list {target} "
                    f"(gave up after {settings.gcs_timeout:.0f} s, GCS_TIMEOUT_SECONDS): {cause}", 1)
    finally:
        progress.close()
    progress.finish(report)  # on a terminal: the files that matched no row, named
    if report.matched == 0 and not report.interrupted:
        if report.other_shards or report.outside_since:
            # Normal for one task of many, or a quiet night: nothing to do is success.
            print(
                f"note: nothing to replay in {report.scope} of {target} ({report.other_shards} metrics files "
                f"in other shards, {report.outside_since} not updated within --since)",
                file=sys.stderr,
            )
        else:
            print(
                f"note: no {settings.metrics_filename} under {target}"
                + (f" in {report.scope}" if report.scope else "")
                + f" ({report.listed} objects listed); check the bucket and prefix",
                file=sys.stderr,
            )
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_summary(report))
    return report.exit_status
