#!/usr/bin/env bash
# Issue 16: the time for everything to be back after a Sentinel failover.
# Runs tests/it/sentinel.rs N times (a master, two replicas, three sentinels
# with down-after-milliseconds 1000, the commander and four agents on
# redis+sentinel://, tasks.durability = "replicated"; the master SIGKILLed
# mid-load) and prints each run's line: when the first submission after
# the kill was accepted, when it was completed (everything back), and the
# tasks lost, run twice and the false deaths.
# The time is the sentinels' (down-after, election, promotion) far more
# than the commander's, so the test's debug build serves.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
cargo test -q --test it --no-run
for i in $(seq "$n"); do
  cargo test -q --test it sentinel:: -- --nocapture 2>&1 | grep "Sentinel failover:"
done
