#!/usr/bin/env bash
# Server instructions per single-row UPDATE that sets both columns of a
# mapping (the proxy's dual-write), on tables without a trigger, with a
# WHEN (false) trigger, and with each form of the guard's UPDATE trigger.
# Counted by callgrind on a single-user-mode backend, which is repeatable:
# (instructions for 3,000 EXECUTEs - for 1,000) / 2,000, each run from
# a freshly vacuumed 1,000-row table with fillfactor 50.
# Run as a user that may run PostgreSQL (not root).
# Usage: bench/scripts/guard_instructions.sh [PGBIN]
set -euo pipefail
bin="${1:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
single() { "$bin/postgres" --single -D "$dir/data" -c fsync=off -c synchronous_commit=off postgres; }
table() {
  echo "CREATE TABLE $1 (id int PRIMARY KEY, email text, email_address text, name text) WITH (fillfactor = 50);"
  echo "INSERT INTO $1 SELECT i, 'A'||i||'@x', 'a'||i||'@x', 'n' FROM generate_series(1, 1000) i;"
  [ -n "$2" ] && echo "CREATE TRIGGER g BEFORE UPDATE OF email, email_address ON $1 FOR EACH ROW WHEN ($2) EXECUTE FUNCTION g();"
  return 0
}
{
  echo 'CREATE FUNCTION g() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;'
  table none ""
  table when_false "false"
  table one_sided_and_forward "(NEW.email IS DISTINCT FROM OLD.email) <> (NEW.email_address IS DISTINCT FROM OLD.email_address) AND NEW.email_address IS DISTINCT FROM lower(NEW.email)"
  table forward_only "NEW.email_address IS DISTINCT FROM lower(NEW.email)"
} | single >/dev/null 2>&1
for t in none when_false one_sided_and_forward forward_only; do
  counts=()
  for n in 1000 3000; do
    # Each run starts from the same vacuumed table (room for HOT updates).
    echo "VACUUM $t;" | single >/dev/null 2>&1
    {
      echo "PREPARE u(text, int) AS UPDATE $t SET email = \$1, email_address = lower(\$1) WHERE id = \$2;"
      for i in $(seq 1 "$n"); do echo "EXECUTE u('B$i@x', $((i % 1000 + 1)));"; done
    } > "$dir/in.sql"
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
      "$bin/postgres" --single -D "$dir/data" -c fsync=off -c synchronous_commit=off postgres \
      < "$dir/in.sql" > /dev/null 2> "$dir/cg.err"
    counts+=("$(grep -o 'Collected : [0-9]*' "$dir/cg.err" | grep -o '[0-9]*$')")
  done
  echo "$t $(( (counts[1] - counts[0]) / 2000 ))"
done
