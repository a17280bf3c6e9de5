#!/usr/bin/env bash
# Server instructions per dual-write transaction, with and without the
# guard trigger: what the guard costs the database, counted by callgrind
# (repeatable however busy the machine is). The server runs under
# valgrind (its backends are forked, so each is counted in a file of its
# own); pgbench, prepared, one client, sends the proxy's dual-write UPDATE
# (both columns set) to a 1,000-row table. Per table: a run of 1,000 and
# one of 3,000 transactions, each from a freshly vacuumed table, each on a
# backend of its own; (3,000-run - 1,000-run) / 2,000.
# Tables: no trigger; a BEFORE UPDATE trigger WHEN (false) (what any
# BEFORE row trigger costs); the guard's WHEN before and after it became
# one test.
# Run as a user that may run PostgreSQL (not root).
# Usage: bench/scripts/guard_instructions.sh [PGBIN]
set -euo pipefail
bin="${1:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
dir="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
trap '"$bin/pg_ctl" -D "$dir/data" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
mkdir "$dir/cg"
valgrind --tool=callgrind --callgrind-out-file="$dir/cg/%p" "$bin/postgres" -D "$dir/data" \
  -p "$port" -k "$dir" -c listen_addresses= -c fsync=off -c synchronous_commit=off \
  -c autovacuum=off > "$dir/log" 2>&1 &
for _ in $(seq 600); do "$bin/pg_isready" -q -h "$dir" -p "$port" && break; sleep 0.2; done
sql() { "$bin/psql" -q -h "$dir" -p "$port" -U postgres -v ON_ERROR_STOP=1 -c "$1" postgres >/dev/null; }
sql 'CREATE FUNCTION g() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$'
declare -A when=(
  [none]=""
  [when_false]="false"
  [guard_before]="(NEW.email IS DISTINCT FROM OLD.email) <> (NEW.email_address IS DISTINCT FROM OLD.email_address) AND NEW.email_address IS DISTINCT FROM lower(NEW.email)"
  [guard_now]="NEW.email_address IS DISTINCT FROM lower(NEW.email)"
)
for t in none when_false guard_before guard_now; do
  sql "CREATE TABLE $t (id int PRIMARY KEY, email text, email_address text, name text) WITH (fillfactor = 50);
       INSERT INTO $t SELECT i, 'A'||i||'@x', 'a'||i||'@x', 'n' FROM generate_series(1, 1000) i"
  [ -n "${when[$t]}" ] && sql "CREATE TRIGGER g BEFORE UPDATE OF email, email_address ON $t FOR EACH ROW WHEN (${when[$t]}) EXECUTE FUNCTION g()"
  printf '\\set id random(1, 1000)\nUPDATE %s SET email = '"'"'B'"'"' || :id, email_address = lower('"'"'B'"'"' || :id) WHERE id = :id;\n' "$t" > "$dir/$t.sql"
done
# The pgbench backend's count. Each backend dumps at its exit (the
# VACUUM's, pgbench's set-up connection, then, late because its file is
# big, the one that ran the UPDATEs). Waits until the dumps since `before`
# are all complete (a dump ends with `totals:`) and none has come for 3 s,
# then takes the biggest.
count() {
  local before="$1" new last="" quiet=0
  while [ "$quiet" -lt 30 ]; do
    sleep 0.1
    new=$(comm -13 <(echo "$before") <(ls "$dir/cg" | sort))
    for f in $new; do grep -q '^totals:' "$dir/cg/$f" || new=""; done
    if [ -n "$new" ] && [ "$new" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; fi
    last="$new"
  done
  for f in $new; do grep -m1 '^summary:' "$dir/cg/$f" | awk '{print $2}'; done | sort -n | tail -1
}
for t in none when_false guard_before guard_now; do
  totals=()
  for n in 1000 3000; do
    before=$(ls "$dir/cg" | sort)
    sql "VACUUM $t"
    "$bin/pgbench" -n -M prepared -h "$dir" -p "$port" -U postgres -c 1 -t "$n" \
      --random-seed=1 -f "$dir/$t.sql" postgres >/dev/null 2>&1
    totals+=("$(count "$before")")
  done
  echo "$t $(( (totals[1] - totals[0]) / 2000 ))"
done
