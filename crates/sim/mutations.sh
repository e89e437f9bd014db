#!/usr/bin/env bash
# Runs every mutation hunt (one cargo feature build each) and prints a table: was it caught by a
# safety property it breaks, which one, where, after how many runs, how long, which guards the
# hunt turned off and what the catching seed fails on with every guard on.
#
#   crates/sim/mutations.sh                  # all mutations
#   crates/sim/mutations.sh mut-double-vote  # some
#
# Exits non-zero if any mutation was not caught by a counted property. Full logs go to
# $MUTATIONS_LOG_DIR (default target/mutations).
set -u
cd "$(dirname "$0")/../.."

if [ $# -gt 0 ]; then
    muts=("$@")
else
    # The mut-* features of crates/sim/Cargo.toml, in order.
    mapfile -t muts < <(sed -n 's/^\(mut-[a-z-]*\) = .*/\1/p' crates/sim/Cargo.toml)
fi
logs=${MUTATIONS_LOG_DIR:-target/mutations}
# Mutant builds go to their own target directory: in the shared one, the last feature build
# would leave target/release/sim with a mutation compiled in, and a later `sim` run (a seed
# sweep, a replay) would report that mutation's failures as real ones.
export CARGO_TARGET_DIR=${MUTATIONS_TARGET_DIR:-target/mutants}
mkdir -p "$logs"

started=$(date +%s)
rows=()
failed=0
for m in "${muts[@]}"; do
    log="$logs/$m.log"
    t0=$(date +%s)
    cargo test -q -p skiff-sim --release --features "$m" --test mutations -- --nocapture \
        every_enabled_mutation_is_caught >"$log" 2>&1
    rc=$?
    t1=$(date +%s)
    row=$(grep -m1 '^MUTATION-ROW|' "$log")
    if [ -z "$row" ]; then
        row="MUTATION-ROW|$m|ERROR (see $log)|-|-|-|-|-|-|-|-"
    fi
    rows+=("$row|$((t1 - t0))")
    [ $rc -eq 0 ] || failed=1
    echo "$m: rc $rc in $((t1 - t0)) s" >&2
done
total=$(($(date +%s) - started))

{
    echo "mutation|caught|property|scenario|seed|runs|hunt s|guards off|guards on: fails on|not counted|build+run s"
    for r in "${rows[@]}"; do echo "${r#MUTATION-ROW|}"; done
} | column -t -s '|'
echo "total wall time: ${total} s"
exit $failed
