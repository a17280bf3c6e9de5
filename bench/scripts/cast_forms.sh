#!/usr/bin/env bash
# Server instructions per simple-protocol UPDATE for each way of writing
# the new column of a varchar(320) legacy column from an expression: what
# the rewrite's cast costs PostgreSQL and what cheaper forms would cost.
# PostgreSQL in single-user mode under callgrind reads the statements
# from a file; each form runs 1,000 and 3,000 statements (the same ids)
# from a freshly vacuumed table: (3,000-run - 1,000-run) / 2,000.
# Run as a user that may run PostgreSQL (not root).
# Usage: bench/scripts/cast_forms.sh [PGBIN]
set -euo pipefail
bin="${1:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
single() { "$bin/postgres" --single -D "$dir/data" postgres "$@"; }
single >/dev/null <<'SQL'
create table users_vc(id int primary key, email varchar(320), name text, email_address varchar(320));
insert into users_vc select g, 'User' || g || '@Example.com', 'n' || g, lower('User' || g || '@Example.com') from generate_series(1, 1000) g;
SQL
v="'U' || ID || '@X.io'"
forms=(
  "none|"
  "lower(v)|, email_address = lower($v)"
  "lower(left(v, 320))|, email_address = lower(left($v, 320))"
  "lower(left((v)::text, 320))|, email_address = lower(left(($v)::text, 320))"
  "lower((v)::varchar(320))|, email_address = lower(($v)::varchar(320))"
  "lower((v)::varchar(320)::text)|, email_address = lower(($v)::varchar(320)::text)"
  "rewrite's form|, email_address = (lower((($v)::character varying(320))))"
)
ids="$dir/ids"
awk 'BEGIN { srand(1); for (i = 0; i < 3000; i++) print 1 + int(rand() * 1000) }' >"$ids"
for form in "${forms[@]}"; do
  name="${form%%|*}"
  set_extra="${form#*|}"
  total=()
  for n in 1000 3000; do
    head -n "$n" "$ids" | while read -r id; do
      echo "UPDATE users_vc SET email = $v$set_extra WHERE id = ID;" | sed "s/ID/$id/g"
    done >"$dir/sql"
    echo "vacuum full users_vc;" | single >/dev/null 2>&1
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg" "$bin/postgres" --single \
      -D "$dir/data" postgres <"$dir/sql" >/dev/null 2>&1
    total+=("$(sed -n 's/^summary: //p' "$dir/cg")")
  done
  echo "$name: $(( (total[1] - total[0]) / 2000 ))"
done
