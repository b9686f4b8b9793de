-- OPT-IN, not applied by yoyo: the Cloud Function's least-privilege database role.
-- The same grants as `metrics-ingest migrate --function-role NAME`
-- (metrics_ingest/db_role.py); tests/test_function_role.py checks both give the
-- same privileges.
--
-- Run it with psql, as the owner of the tables (on Cloud SQL: the Django user),
-- after `metrics-ingest migrate` has created training_metrics_ingestions:
--
--   psql "$ADMIN_DATABASE_URL" -v ON_ERROR_STOP=1 -v role=metrics_ingest_fn \
--        -v quicktest_table=ml_platform_quicktest -f migrations/optional/function_role.sql
--   psql "$ADMIN_DATABASE_URL" -c '\password metrics_ingest_fn'   # then store it in Secret Manager
--
-- The role may: read id, gcs_artifacts_path and training_history_json of the
-- platform table and update training_history_json only (SELECT ... FOR UPDATE
-- needs UPDATE on one column); read and insert training_metrics_ingestions (and
-- draw its ids); connect; use the schema. Nothing else. Re-running converges:
-- whatever else the role held on these tables is revoked first.
--
-- The notification each row write sends in its own transaction,
-- pg_notify(NOTIFY_CHANNEL, payload), needs no extra privilege: PostgreSQL lets
-- every role NOTIFY (and LISTEN), so nothing is granted for it.
--
-- What PUBLIC (every role) gets by default and the function does not need is
-- taken from PUBLIC: TEMPORARY on the database, and CREATE on schema public
-- (granted to PUBLIC up to PostgreSQL 14). The non-superuser owners of tables in
-- public and the role running this get them explicitly first, so Django's
-- migrations keep working. Only the database's / schema's owner can revoke from
-- PUBLIC: run this as that owner (otherwise PostgreSQL only warns).

\set ON_ERROR_STOP 1
BEGIN;

SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec

-- Revoking a table privilege revokes its column privileges too.
REVOKE ALL ON TABLE :"quicktest_table" FROM :"role";
REVOKE ALL ON TABLE training_metrics_ingestions FROM :"role";

GRANT SELECT (id, gcs_artifacts_path, training_history_json),
      UPDATE (training_history_json)
   ON TABLE :"quicktest_table" TO :"role";
GRANT SELECT, INSERT ON TABLE training_metrics_ingestions TO :"role";

-- The id sequence behind training_metrics_ingestions.id (bigserial).
SELECT format('REVOKE ALL ON SEQUENCE %s FROM %I', s, :'role'),
       format('GRANT USAGE ON SEQUENCE %s TO %I', s, :'role')
  FROM pg_get_serial_sequence('training_metrics_ingestions', 'id') AS s
 WHERE s IS NOT NULL \gexec

SELECT DISTINCT format('GRANT USAGE ON SCHEMA %I TO %I', n.nspname, :'role')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid IN (to_regclass(quote_ident(:'quicktest_table')), 'training_metrics_ingestions'::regclass) \gexec

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'role') \gexec

-- Who may have relied on PUBLIC's defaults keeps them, explicitly.
SELECT format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), k.rolname)
  FROM (SELECT DISTINCT r.rolname FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles r ON r.oid = c.relowner
         WHERE n.nspname = 'public' AND NOT r.rolsuper AND r.rolname <> :'role'
        UNION
        SELECT rolname FROM pg_roles WHERE rolname = current_user AND NOT rolsuper AND rolname <> :'role') k
 WHERE has_database_privilege('public', current_database(), 'TEMPORARY') \gexec
SELECT format('GRANT CREATE ON SCHEMA public TO %I', k.rolname)
  FROM (SELECT DISTINCT r.rolname FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles r ON r.oid = c.relowner
         WHERE n.nspname = 'public' AND NOT r.rolsuper AND r.rolname <> :'role'
        UNION
        SELECT rolname FROM pg_roles WHERE rolname = current_user AND NOT rolsuper AND rolname <> :'role') k
 WHERE to_regnamespace('public') IS NOT NULL AND has_schema_privilege('public', 'public', 'CREATE') \gexec

SELECT format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC, %I', current_database(), :'role') \gexec
SELECT format('REVOKE CREATE ON SCHEMA public FROM PUBLIC, %I', :'role')
 WHERE to_regnamespace('public') IS NOT NULL \gexec
SELECT DISTINCT format('REVOKE CREATE ON SCHEMA %I FROM %I', n.nspname, :'role')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid IN (to_regclass(quote_ident(:'quicktest_table')), 'training_metrics_ingestions'::regclass)
   AND n.nspname <> 'public' \gexec

COMMIT;
