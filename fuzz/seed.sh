#!/usr/bin/env bash
# Seeds the rewrite target's corpus from the statement corpus the e2e tests
# run (tests/corpus/statements.txt), each statement under three phases'
# rules (the first byte selects the phase).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/rewrite
i=0
grep -v '^#' ../tests/corpus/statements.txt | grep -v '^\s*$' | while IFS= read -r line; do
  sql="${line#*| }"; sql="${sql#*| }"
  for p in 2 5 6; do printf "\\x0$p%s" "$sql" > "corpus/rewrite/seed-$i-$p"; done
  i=$((i + 1))
done
