#!/usr/bin/env bash
# The seed's init.sh: an empty `application` database owned by an `application` user, a
# read-only `application_ro` user, and the `replication` role (password `replication`) that the
# replica clones and streams with. Safe to run again: what exists is kept, passwords are reset.
#
# In the image it runs once, when the master's data directory is initialised
# (/docker-entrypoint-initdb.d/init.sh); run it again with
#   docker compose exec -u postgres master /docker-entrypoint-initdb.d/init.sh
# Outside Docker it needs a running server; the usual libpq variables say where:
#   PGHOST=/tmp PGPORT=5433 PSQL=/usr/lib/postgresql/18/bin/psql docker/init.sh
#
# Environment: PSQL (psql to use, default `psql`), POSTGRES_USER (superuser, default postgres),
# PGHOST, PGPORT, REPLICATION_PASSWORD (default replication), APPLICATION_PASSWORD (default
# application), APPLICATION_RO_PASSWORD (default application_ro).
set -euo pipefail

psql_bin=${PSQL:-psql}
superuser=${POSTGRES_USER:-postgres}

"$psql_bin" -X -q -v ON_ERROR_STOP=1 --username "$superuser" --dbname postgres \
  -v replication_password="${REPLICATION_PASSWORD:-replication}" \
  -v application_password="${APPLICATION_PASSWORD:-application}" \
  -v application_ro_password="${APPLICATION_RO_PASSWORD:-application_ro}" <<'SQL'
SELECT 'CREATE ROLE replication' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replication') \gexec
ALTER ROLE replication WITH REPLICATION LOGIN PASSWORD :'replication_password';

SELECT 'CREATE ROLE application' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'application') \gexec
ALTER ROLE application WITH LOGIN PASSWORD :'application_password';

SELECT 'CREATE ROLE application_ro' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'application_ro') \gexec
ALTER ROLE application_ro WITH LOGIN PASSWORD :'application_ro_password';

SELECT 'CREATE DATABASE application OWNER application' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'application') \gexec
REVOKE ALL ON DATABASE application FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE application TO application;
GRANT CONNECT ON DATABASE application TO application_ro;

\connect application
-- application creates and writes the tables; application_ro reads them, including future ones.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO application;
GRANT USAGE ON SCHEMA public TO application_ro;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO application_ro;
ALTER DEFAULT PRIVILEGES FOR ROLE application IN SCHEMA public GRANT SELECT ON TABLES TO application_ro;
SQL

echo "init.sh: database application, roles application, application_ro and replication are ready"
