#!/usr/bin/env bash
# pgclone-entrypoint.sh: the entrypoint of the image built by docker/Dockerfile, run before the
# postgres image's own docker-entrypoint.sh.
#
#   pgclone-entrypoint.sh [postgres] [ARGS...]   start the server (the image's CMD)
#   pgclone-entrypoint.sh --print-settings       print the settings below as postgresql.conf lines
#   pgclone-entrypoint.sh COMMAND [ARGS...]      run anything else as it is (bash, psql, ...)
#
# Every server starts with the lines of $PGCLONE_CONF_DIR/postgresql.conf as `-c name=value`
# options, adapted to its major version (wal_keep_segments up to 12, wal_keep_size from 13 on,
# summarize_wal from 17 on), and with hba_file = $PGCLONE_CONF_DIR/pg_hba.conf.
#
# PGCLONE_ROLE=replica: when $PGDATA is empty, wait (at most $MASTER_WAIT seconds) for the
# master to accept connections, seed $PGDATA with
#   pgclone --host $MASTER_HOST --port $MASTER_PORT -U $REPLICATION_USER --dest $PGDATA -R
# and start it: it comes up as a streaming standby of the master. A data directory that is not
# empty starts as it is, except a standby (standby.signal) on 17+: the entrypoint cannot tell
# beforehand whether the master still has the WAL it needs (the replication role may not list
# the master's pg_wal), so it brings it up to date first with
#   pgclone --refresh ... --dest $PGDATA -R
# (only the blocks changed since its last restartpoint), and when pgclone refuses (its error
# line says why: summarize_wal off, summaries gone, another cluster...), it empties $PGDATA and
# seeds it again. A directory a refresh left half-way (pgclone_refresh) is refreshed again.
#
# PGCLONE_ROLE=master, SYNCHRONOUS_REPLICA=on: once a replica streams from this server, set
# synchronous_standby_names = '*' (ALTER SYSTEM, then reload), as the seed's postgresql.conf
# does from the start (where it makes the master's own setup wait forever for a standby).
#
# Environment, with the image's defaults:
#   PGCLONE_ROLE          master | replica                          (master)
#   PGDATA                data directory                            (/var/lib/postgresql/data)
#   PGCLONE_CONF_DIR      holds postgresql.conf and pg_hba.conf     (this script's directory)
#   PGCLONE_BIN           pgclone to run                            (pgclone)
#   PG_BIN                directory of postgres                     (found on PATH)
#   PG_MAJOR              server major version                      (from `postgres -V`)
#   PGCLONE_NEXT          what runs the server; empty: postgres itself (docker-entrypoint.sh)
#   MASTER_HOST, MASTER_PORT                                        (master, 5432)
#   REPLICATION_USER, REPLICATION_PASSWORD                          (replication, replication)
#   MASTER_WAIT           seconds to wait for the master            (300)
#   PGCLONE_ARGS          more pgclone flags for a seed (not for a refresh), e.g. "-C -S replica" (none)
#   PROMOTE_TRIGGER_FILE  the seed's trigger_file, 10-15 only       (/tmp/is_master)
#   SYNCHRONOUS_REPLICA   on | off                                  (off)
#   SYNCHRONOUS_WAIT      seconds the master waits for a replica    (3600)
#   PSQL, POSTGRES_USER, PGHOST, PGPORT: how the master reaches itself for SYNCHRONOUS_REPLICA
set -Eeuo pipefail
shopt -s inherit_errexit

PGDATA=${PGDATA:-/var/lib/postgresql/data}
PGCLONE_ROLE=${PGCLONE_ROLE:-master}
PGCLONE_CONF_DIR=${PGCLONE_CONF_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
PGCLONE_BIN=${PGCLONE_BIN:-pgclone}
PG_BIN=${PG_BIN:-}
PGCLONE_NEXT=${PGCLONE_NEXT-docker-entrypoint.sh}
MASTER_HOST=${MASTER_HOST:-master}
MASTER_PORT=${MASTER_PORT:-5432}
REPLICATION_USER=${REPLICATION_USER:-replication}
REPLICATION_PASSWORD=${REPLICATION_PASSWORD:-replication}
MASTER_WAIT=${MASTER_WAIT:-300}
PROMOTE_TRIGGER_FILE=${PROMOTE_TRIGGER_FILE-/tmp/is_master}
SYNCHRONOUS_REPLICA=${SYNCHRONOUS_REPLICA:-off}
SYNCHRONOUS_WAIT=${SYNCHRONOUS_WAIT:-3600}

log() { printf 'pgclone-entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# Runs a command as the postgres account when we are root (in the image), else as we are.
as_postgres() {
  if is_root; then gosu postgres "$@"; else "$@"; fi
}

# The server's major version: PG_MAJOR (set by the postgres images), else `postgres -V`.
server_major() {
  if [ -n "${PG_MAJOR:-}" ]; then
    echo "$PG_MAJOR"
    return
  fi
  local version
  version=$("${PG_BIN:+$PG_BIN/}postgres" -V) || die "cannot run ${PG_BIN:+$PG_BIN/}postgres -V"
  [[ $version =~ \(PostgreSQL\)\ ([0-9]+) ]] || die "cannot tell the major version from '$version'"
  echo "${BASH_REMATCH[1]}"
}

# A wal_keep_size value (MB, or with an MB/GB unit) in MB.
size_mb() {
  case "$1" in
    *GB) echo $(( ${1%GB} * 1024 )) ;;
    *MB) echo "${1%MB}" ;;
    *[!0-9]*|'') die "wal_keep_size = '$1': give it in MB or GB" ;;
    *) echo "$1" ;;
  esac
}

# The settings for a server of major $1 in role $2, one `name=value` a line.
settings() {
  local major=$1 role=$2 line name value
  [ -r "$PGCLONE_CONF_DIR/postgresql.conf" ] || die "no $PGCLONE_CONF_DIR/postgresql.conf"
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    [[ $line =~ ^[[:space:]]*([A-Za-z_.]+)[[:space:]]*=?[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]] || continue
    name=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[2]}
    value=${value#\'}
    value=${value%\'}
    # 16 MB segments (the default wal_segment_size).
    if [ "$name" = wal_keep_segments ] && [ "$major" -ge 13 ]; then
      name=wal_keep_size
      value="$(( value * 16 ))MB"
    elif [ "$name" = wal_keep_size ] && [ "$major" -le 12 ]; then
      name=wal_keep_segments
      value=$(size_mb "$value")
      value=$(( value / 16 ))
    elif [ "$name" = summarize_wal ] && [ "$major" -lt 17 ]; then
      continue
    fi
    printf '%s=%s\n' "$name" "$value"
  done < "$PGCLONE_CONF_DIR/postgresql.conf"
  # trigger_file lives in recovery.conf up to 11 (see seed_replica); 16 removed the setting.
  if [ "$role" = replica ] && [ -n "$PROMOTE_TRIGGER_FILE" ] && [ "$major" -ge 12 ] && [ "$major" -le 15 ]; then
    printf 'promote_trigger_file=%s\n' "$PROMOTE_TRIGGER_FILE"
  fi
}

# Can we open a TCP connection to host $1, port $2 within 5 seconds?
tcp_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Waits (until $deadline, in SECONDS) for the master to accept TCP connections.
wait_for_master() {
  local deadline=$1 next_note=0
  [ "${MASTER_HOST:0:1}" != / ] || return 0
  until tcp_open "$MASTER_HOST" "$MASTER_PORT"; do
    (( SECONDS < deadline )) || die "$MASTER_HOST:$MASTER_PORT accepted no connection within ${MASTER_WAIT}s"
    if (( SECONDS >= next_note )); then
      log "replica: waiting for $MASTER_HOST:$MASTER_PORT to accept connections ($(( deadline - SECONDS ))s left)"
      next_note=$(( SECONDS + 10 ))
    fi
    sleep 1
  done
}

# pgclone against the master as the replication role, with the flags given, as postgres.
run_pgclone() {
  local cmd=("$PGCLONE_BIN" --host "$MASTER_HOST" --port "$MASTER_PORT" -U "$REPLICATION_USER"
             --dest "$PGDATA" -R -w -c fast "$@")
  log "replica: running ${cmd[*]}"
  as_postgres env PGPASSWORD="$REPLICATION_PASSWORD" "${cmd[@]}"
}

# 17+: brings the stopped standby in $PGDATA up to date in place; fails when pgclone refuses.
refresh_replica() {
  local start=$SECONDS status=0
  log "replica: $PGDATA holds a standby of PostgreSQL $1: refreshing it from $MASTER_HOST:$MASTER_PORT with pgclone --refresh (waiting up to ${MASTER_WAIT}s for the master)"
  wait_for_master $(( SECONDS + MASTER_WAIT ))
  run_pgclone --refresh -v || status=$?
  if [ "$status" -ne 0 ]; then
    log "replica: pgclone --refresh failed (exit $status; its error line above says why)"
    return 1
  fi
  log "replica: refreshed in $(( SECONDS - start ))s"
}

# Seeds the empty $PGDATA from the master with a full clone.
clone_replica() {
  local major=$1 deadline=$(( SECONDS + MASTER_WAIT )) start=$SECONDS extra=()
  log "replica: $PGDATA is empty: seeding it from $MASTER_HOST:$MASTER_PORT with pgclone (waiting up to ${MASTER_WAIT}s for the master)"
  wait_for_master "$deadline"
  read -r -a extra <<<"${PGCLONE_ARGS:-}"
  # The master may still be setting up (its roles come from init.sh): retry until the deadline.
  until run_pgclone -P "${extra[@]}"; do
    (( SECONDS < deadline )) || die "could not seed $PGDATA from $MASTER_HOST:$MASTER_PORT within ${MASTER_WAIT}s"
    log "replica: pgclone failed; trying again in 2s ($(( deadline - SECONDS ))s left)"
    sleep 2
  done
  log "replica: seeded $(du -sh "$PGDATA" | cut -f1) in $(( SECONDS - start ))s"

  if [ "$major" -le 11 ] && [ -n "$PROMOTE_TRIGGER_FILE" ]; then
    printf "trigger_file = '%s'\n" "$PROMOTE_TRIGGER_FILE" | as_postgres tee -a "$PGDATA/recovery.conf" >/dev/null
  fi
}

# PGCLONE_ROLE=replica: an empty $PGDATA becomes a standby of the master; on 17+ a standby's
# data directory is refreshed (or, refused, seeded again); anything else starts as it is.
seed_replica() {
  local major=$1
  if [ -d "$PGDATA" ] && [ -n "$(ls -A "$PGDATA")" ]; then
    local interrupted=0
    if [ "$major" -ge 17 ] && [ -s "$PGDATA/PG_VERSION" ] && [ -f "$PGDATA/pgclone_refresh" ]; then
      interrupted=1
    elif [ ! -s "$PGDATA/PG_VERSION" ] || [ ! -s "$PGDATA/global/pg_control" ]; then
      die "$PGDATA is neither empty nor a complete data directory (an interrupted seed?): empty it to seed it again"
    fi
    if [ "$major" -lt 17 ] || { [ "$interrupted" = 0 ] && [ ! -f "$PGDATA/standby.signal" ]; }; then
      log "replica: $PGDATA holds a data directory: starting it as it is"
      return 0
    fi
    if refresh_replica "$major"; then
      return 0
    fi
    log "replica: emptying $PGDATA to seed it again with a full clone"
    find "$PGDATA" -mindepth 1 -delete
  fi
  mkdir -p "$PGDATA"
  if is_root; then chown postgres:postgres "$PGDATA"; fi
  chmod 700 "$PGDATA"
  clone_replica "$major"
}

# PGCLONE_ROLE=master, SYNCHRONOUS_REPLICA=on: runs in the background next to the server.
watch_synchronous() {
  local psql=("${PSQL:-psql}" -X -q -A -t --username "${POSTGRES_USER:-postgres}" --dbname postgres)
  local deadline=$(( SECONDS + SYNCHRONOUS_WAIT )) current streaming
  while (( SECONDS < deadline )); do
    sleep 2
    current=$("${psql[@]}" -c 'SHOW synchronous_standby_names' 2>/dev/null) || continue
    if [ -n "$current" ]; then
      log "master: synchronous_standby_names = '$current' already"
      return 0
    fi
    # pgclone's own WAL connection streams too while it seeds a replica: leave it out.
    streaming=$("${psql[@]}" -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name <> 'pgclone'" 2>/dev/null) || continue
    if [ "${streaming:-0}" -gt 0 ] \
      && "${psql[@]}" -c "ALTER SYSTEM SET synchronous_standby_names = '*'" -c 'SELECT pg_reload_conf()' >/dev/null; then
      log "master: a replica streams: synchronous_standby_names = '*' (commits now wait for a synchronous standby)"
      return 0
    fi
  done
  log "master: no replica streamed within ${SYNCHRONOUS_WAIT}s: synchronous replication stays off"
}

main() {
  if [ "${1:-}" = --print-settings ]; then
    local line lines major
    major=$(server_major)
    lines=$(settings "$major" "$PGCLONE_ROLE")
    while IFS= read -r line; do
      printf "%s = '%s'\n" "${line%%=*}" "${line#*=}"
    done <<<"$lines"
    return 0
  fi
  # As the official entrypoint: flags alone mean the server.
  if [ $# -eq 0 ] || [ "${1:0:1}" = - ]; then
    set -- postgres "$@"
  fi
  case "$1" in
    postgres) ;;
    *) exec "$@" ;;
  esac
  shift
  local arg
  for arg in "$@"; do
    case "$arg" in
      # postgres wants these first and alone: pass them through untouched.
      -V|--version|--help|-\?|--describe-config|-C)
        if [ -n "$PGCLONE_NEXT" ]; then exec "$PGCLONE_NEXT" postgres "$@"; fi
        exec "${PG_BIN:+$PG_BIN/}postgres" "$@" ;;
    esac
  done

  local major
  major=$(server_major)
  case "$PGCLONE_ROLE" in
    master)
      case "$SYNCHRONOUS_REPLICA" in
        on|true|yes|1)
          log "master: synchronous_standby_names = '*' once a replica streams (SYNCHRONOUS_REPLICA=$SYNCHRONOUS_REPLICA)"
          # Detached (the server replaces this shell); it ends by itself, with status 0.
          ( (watch_synchronous || true) </dev/null & ) ;;
        off|false|no|0|'') ;;
        *) die "SYNCHRONOUS_REPLICA=$SYNCHRONOUS_REPLICA: use on or off" ;;
      esac
      ;;
    replica) seed_replica "$major" ;;
    *) die "PGCLONE_ROLE=$PGCLONE_ROLE: use master or replica" ;;
  esac

  local options=() setting lines
  lines=$(settings "$major" "$PGCLONE_ROLE")
  while IFS= read -r setting; do
    options+=(-c "$setting")
  done <<<"$lines"
  options+=(-c "hba_file=$PGCLONE_CONF_DIR/pg_hba.conf")
  log "$PGCLONE_ROLE: PostgreSQL $major with ${options[*]}"

  if [ -n "$PGCLONE_NEXT" ]; then
    exec "$PGCLONE_NEXT" postgres "${options[@]}" "$@"
  fi
  exec "${PG_BIN:+$PG_BIN/}postgres" "${options[@]}" "$@"
}

main "$@"
