#!/usr/bin/env bash
# Commit a long job's products as they arrive: every INTERVAL seconds, whatever changed under PATH... is committed
# (only those paths: other work in the tree stays as it is), until process PID ends; then once more. A round that
# finds a product being replaced (its .tmp or .old sibling present) or the index locked by another git command
# commits at the next interval instead.
#
#   make train TRAIN_ARGS='... --publish models/libero_goal_llm4' > train.log 2>&1 &
#   scripts/commit_products.sh $! 600 'Training small_llm4' models/libero_goal_llm4 \
#       benchmarks/results/train_libero_goal_llm4.json docs/loss_curve_libero_goal_llm4.png
set -uo pipefail
pid=$1 interval=$2 label=$3
shift 3
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" || exit 1

publishing() {  # a product being replaced: its .tmp or .old sibling exists (see Trainer.publish)
    for path in "$@"; do
        [ -e "$path.tmp" ] || [ -e "$path.old" ] && return 0
    done
    return 1
}

commit() {
    local present=()
    for path in "$@"; do
        if [ -e "$path" ] || git ls-files --error-unmatch -- "$path" > /dev/null 2>&1; then present+=("$path"); fi
    done
    [ ${#present[@]} -gt 0 ] || return 0
    publishing "$@" && return 0
    git add -A -- "${present[@]}" || return 0
    if publishing "$@"; then  # it began while we added: leave this round
        git reset -q -- "${present[@]}"
        return 0
    fi
    git diff --cached --quiet -- "${present[@]}" && return 0
    git commit -q -m "$label: products as of $(date -u +%Y-%m-%dT%H:%MZ)" -- "${present[@]}" \
        && echo "committed $(git rev-parse --short HEAD): ${present[*]}"
}

while kill -0 "$pid" 2> /dev/null; do
    sleep "$interval"
    commit "$@"
done
commit "$@"
