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
# Build tags of the fuzzed packages (the Makefile's TESTTAGS): the fault
# points of internal/faults compiled in, as in every test run.
TESTTAGS=${TESTTAGS-cairnfaults}
only=${1:-.}

# files in a corpus directory (0 if there is none yet)
count_files() { if [[ -d $1 ]]; then find "$1" -type f | wc -l; else echo 0; fi; }

failed=()
count=0
start=$(date +%s)
# "dir name" pairs, sorted, from the test files git knows or would add.
while read -r dir name; do
	[[ $name =~ $only ]] || continue
	count=$((count + 1))
	t0=$(date +%s)
	log=$(mktemp)
	corpus="$dir/testdata/fuzz/$name"
	before=$(count_files "$corpus")
	ok=0
	note=""
	if $GO test -tags="$TESTTAGS" -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "./$dir" >"$log" 2>&1; then
		ok=1
	elif [[ $(count_files "$corpus") == "$before" ]] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q -- '--- FAIL: .*#\|panic:\|Failing input' "$log"; then
		# Go's coordinator can report its own -fuzztime deadline as a
		# failure (go.dev/issue/75804, fixed in Go 1.27): no input was
		# written, so nothing failed.
		ok=1
		note=" (fuzztime deadline race, go.dev/issue/75804, ignored)"
	fi
	if ((ok)); then
		execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
		printf 'fuzz %-28s %-22s ok   %6ss  %s execs%s\n' "$name" "$dir" "$(($(date +%s) - t0))" "${execs:-?}" "$note"
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
