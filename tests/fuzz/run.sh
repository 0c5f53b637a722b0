#!/usr/bin/env bash
# Runs every fuzz target for a short, fixed time (CI), starting from the
# committed seeds plus whatever corpus earlier runs left under the output dir.
#
# Usage: tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  default 25 (or $FUZZ_SECONDS)
#   TARGET              default: every target in tests/fuzz/Cargo.toml
# Environment:
#   FUZZ_OUT          corpus and crash artifacts (default: target/fuzz)
#   CARGO_TARGET_DIR  where the instrumented build goes (default: target)
# Needs cargo-fuzz (installed here when missing) and, for AddressSanitizer,
# the nightly toolchain (without it: stable, no sanitizer).
# A crash, a failed assertion, a leak, a timeout or running out of memory
# fails the run; the input is saved under $FUZZ_OUT/artifacts/TARGET/ and
# `cargo +nightly fuzz run --fuzz-dir tests/fuzz TARGET FILE` replays it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

seconds="${1:-${FUZZ_SECONDS:-25}}"
[ $# -gt 0 ] && shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' "$here/Cargo.toml" | grep -v '^chat-server-fuzz$')
fi
out="${FUZZ_OUT:-$repo/target/fuzz}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

log() { echo "fuzz: $*" >&2; }

# Nightly gives AddressSanitizer; without it (a machine may have only its one
# stable toolchain) the targets still build on stable, uninstrumented for
# memory errors but with coverage, overflow checks and debug assertions.
toolchain=(+nightly)
build_flags=()
if ! cargo +nightly --version >/dev/null 2>&1; then
  log "no nightly toolchain: fuzzing on stable without a sanitizer"
  toolchain=()
  build_flags=(--sanitizer none)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

log "building the fuzz targets"
cargo "${toolchain[@]}" fuzz build --fuzz-dir "$here" --target-dir "$target_dir" "${build_flags[@]}" >&2
failed=()
for target in "${targets[@]}"; do
  corpus="$out/corpus/$target"
  artifacts="$out/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  log "$target: ${seconds} s"
  # Inputs up to 64 KiB: enough for an upgrade plus frames over the 512-byte limit.
  if cargo "${toolchain[@]}" fuzz run --fuzz-dir "$here" --target-dir "$target_dir" "${build_flags[@]}" "$target" \
    "$corpus" "$here/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=256 -artifact_prefix="$artifacts/" -print_final_stats=1 \
    > "$out/$target.log" 2>&1; then
    stats="$(grep -E '^(stat::number_of_executed_units|stat::new_units_added)' "$out/$target.log" | tr '\n' ' ' | tr -s ' ')"
    log "$target: ok ($stats; corpus $(ls "$corpus" | wc -l) inputs)"
  else
    log "$target: FAILED; the end of its log ($out/$target.log):"
    grep -E -A1 'panicked|ERROR|SUMMARY|Test unit written|Base64' "$out/$target.log" | head -n 20 >&2 || true
    tail -n 5 "$out/$target.log" >&2
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]}"
  exit 1
fi
log "all ${#targets[@]} targets ran ${seconds} s each without a finding"
