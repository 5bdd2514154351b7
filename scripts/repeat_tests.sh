#!/usr/bin/env bash
# `make test` N times in a row in a plain clone of this repository's HEAD, as CI runs it, with one log per run and a
# summary line per run; --hog also keeps one core busy with a Python loop for the whole time. Evidence that the
# suite does not flake (issue: a test suite that never flakes).
#
#   scripts/repeat_tests.sh 10 /tmp/flake_check            # idle machine
#   scripts/repeat_tests.sh 3 /tmp/flake_check --hog       # one core busy beside it
#   LABEL=beside-eval scripts/repeat_tests.sh 3 /tmp/flake_check   # a load of your own beside it, named in the logs
set -uo pipefail
runs=$1 directory=$2 hog=${3:-}
repository=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
mkdir -p "$directory"
clone="$directory/main"
[ -d "$clone" ] || git clone -q "$repository" "$clone"
git -C "$clone" fetch -q "$repository" HEAD && git -C "$clone" checkout -q FETCH_HEAD
label=${LABEL:-idle}
if [ "$hog" = --hog ]; then
    label=hog
    python3 -c 'while True: pass' &
    hog_pid=$!
    trap 'kill $hog_pid' EXIT
fi
for run in $(seq "$runs"); do
    started=$(date +%s)
    make -C "$clone" test PYTEST_ARGS=--durations=15 > "$directory/${label}_$run.log" 2>&1
    status=$?
    summary=$(grep -E '^=+ .*(passed|failed).* =+$' "$directory/${label}_$run.log" | tail -1)
    echo "$label run $run at $(git -C "$clone" rev-parse --short HEAD): exit $status, $(( $(date +%s) - started )) s: $summary" \
        | tee -a "$directory/summary.txt"
done
