#!/usr/bin/env bash
# Runs every Go fuzz target of the repository (every `func FuzzXxx` in a
# *_test.go file, found afresh each run) for FUZZTIME each (default 30s),
# one after the other, and fails if any finds a failing input (go test
# writes it to the package's testdata/fuzz/<FuzzName>/, where it becomes a
# regression seed once committed).
#
#   make fuzz                      # 30s per target
#   make fuzz FUZZTIME=10m         # longer
#   FUZZTIME=3s hack/fuzz.sh       # what make test runs
#   hack/fuzz.sh FuzzBackupHandle  # only targets matching a regexp
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-30s}
GO=${GO:-go}
only=${1:-.}

failed=()
count=0
start=$(date +%s)
# "dir name" pairs, sorted, from the test files git knows or would add.
while read -r dir name; do
	[[ $name =~ $only ]] || continue
	count=$((count + 1))
	t0=$(date +%s)
	log=$(mktemp)
	if $GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "./$dir" >"$log" 2>&1; then
		execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
		printf 'fuzz %-28s %-22s ok   %6ss  %s execs\n' "$name" "$dir" "$(($(date +%s) - t0))" "${execs:-?}"
	else
		printf 'fuzz %-28s %-22s FAIL %6ss\n' "$name" "$dir" "$(($(date +%s) - t0))"
		grep -v '^I[0-9]' "$log" | tail -40 | sed 's/^/    /'
		failed+=("$dir:$name")
	fi
	rm -f "$log"
done < <(git ls-files --cached --others --exclude-standard -- '*_test.go' |
	xargs grep -H '^func Fuzz[A-Za-z0-9_]*(' |
	awk -F: '{ d = $1; if (!sub("/[^/]*$", "", d)) d = "."; n = $2; sub("^func ", "", n); sub("[(].*", "", n); print d, n }' | sort -u)

echo "fuzz: $count targets, ${FUZZTIME} each, $(($(date +%s) - start))s in all"
if ((${#failed[@]})); then
	echo "fuzz: failing targets: ${failed[*]} (inputs in their package's testdata/fuzz/)" >&2
	exit 1
fi
