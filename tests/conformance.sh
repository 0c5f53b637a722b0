#!/usr/bin/env bash
# Conformance and fuzzing, for CI: Autobahn|Testsuite over ws:// and wss://
# against the echo route (tests/autobahn/run.sh), then every fuzz target for a
# short fixed time (tests/fuzz/run.sh). The hostile-input integration tests
# (tests/hostile.rs) run with `cargo test`.
#
# Usage: tests/conformance.sh [FUZZ_SECONDS_PER_TARGET]   (default 25)
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
bash tests/autobahn/run.sh || status=1
bash tests/fuzz/run.sh "${1:-25}" || status=1
exit "$status"
