#!/usr/bin/env bash
# A PostgreSQL server on this machine for the store tests, from Debian's packages:
#
#   export RUNNER_TEST_PG=$(sudo scripts/pg-local.sh)    # then: cargo test
#
# Idempotent: installs `postgresql` if missing, starts its cluster (pg_ctlcluster, no systemd
# needed), creates the role `runner_test` (password login, CREATEDB: every test makes a database
# of its own and drops it) and the database `runner_test`, and prints their URL on stdout
# (everything else goes to stderr). A test bed: the password is fixed and the server listens on
# localhost only.
set -euo pipefail

say() { printf 'pg-local: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"

if ! command -v pg_lsclusters >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    say "installing postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
fi

# The package makes a cluster when it is installed; make one where it did not (an image built
# with cluster creation turned off).
if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
    newest=$(ls /usr/lib/postgresql | sort -n | tail -1)
    [ -n "$newest" ] || die "no PostgreSQL server under /usr/lib/postgresql"
    say "creating cluster $newest/main"
    pg_createcluster "$newest" main >&2
fi
# The first cluster of the newest version installed: "VERSION NAME PORT STATUS ...".
read -r version name port status _ < <(pg_lsclusters -h | sort -k1,1nr | head -1)
[ -n "${version:-}" ] || die "no PostgreSQL cluster to start"
if [ "$status" != "online" ]; then
    say "starting cluster $version/$name on port $port"
    pg_ctlcluster "$version" "$name" start >&2
fi
for _ in $(seq 1 60); do
    su postgres -c "pg_isready -q -p $port" && break
    sleep 1
done
su postgres -c "pg_isready -q -p $port" || die "cluster $version/$name did not come up on port $port"

psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -qtA -p $port $*" >&2; }
psql_admin "-c \"DO \\\$\\\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'runner_test') THEN
        CREATE ROLE runner_test LOGIN CREATEDB PASSWORD 'runner_test';
    END IF;
END \\\$\\\$;\""
if [ -z "$(su postgres -c "psql -qtA -p $port -c \"SELECT 1 FROM pg_database WHERE datname = 'runner_test'\"")" ]; then
    psql_admin "-c 'CREATE DATABASE runner_test OWNER runner_test'"
fi

echo "postgres://runner_test:runner_test@127.0.0.1:$port/runner_test"
