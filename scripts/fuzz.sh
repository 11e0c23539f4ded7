#!/usr/bin/env bash
# Bounded fuzzing of every target in fuzz/ (cargo-fuzz + libFuzzer) on the stable toolchain:
# installs cargo-fuzz when missing, builds the targets once, runs each for SECONDS (default
# 40) from the committed corpus (fuzz/corpus/<target>/, left unchanged: new inputs go to a
# scratch directory) and fails on the first crash, with the input in fuzz/artifacts/<target>/.
# A fixed seed (FUZZ_SEED, default 1) keeps CI's run repeatable; set another to explore.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-40}
shift || true

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# `-s none`: no sanitizer, so no `-Z` flag and no nightly toolchain (pgveil has no unsafe
# code; a panic is what the targets look for). Debug assertions and overflow checks stay on.
opts=(-s none)
cargo fuzz build "${opts[@]}"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run "${opts[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -seed="${FUZZ_SEED:-1}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
