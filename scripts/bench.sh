#!/usr/bin/env bash
# The handshake benchmark of mod_hsm_ssl (tests/bench/handshake.rs):
#
#     sudo bash scripts/bench.sh                 # full run, about 25 minutes
#     sudo bash scripts/bench.sh --short         # a few seconds per cell (CI)
#     sudo bash scripts/bench.sh --update-doc    # full run, then rewrite BENCHMARKS.md
#
# Starts Apache five ways on one machine with one SoftHSM2 token and one
# certificate pair (file key; mod_hsm_ssl in-process, with direct calls and
# with its key service; libp11's pkcs11 engine), drives full TLS handshakes
# at concurrency 1, 8 and 32 in four scenarios, measures the token's raw
# signing rate, repeats the module's cells (in-process and key service) and
# the engine's with 1 ms and 5 ms added per PKCS#11 call, and writes
# report.md, handshakes.svg and
# cells.csv to a results folder (default target/bench/<UTC time>).
#
# Options go to the benchmark; see the top of tests/bench/handshake.rs
# (--seconds, --warmup, --reps, --concurrency, --scenarios, --out).
# Speed never fails the run; a setup that should work and does not does.
#
# Environment: SKIP_DEPS=1 skips scripts/install-deps.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

SCRIPT=bench.sh
# shellcheck source=scripts/prepare.sh
. "$REPO/scripts/prepare.sh"

say "cargo build --release --workspace"
cargo build --release --workspace

say "cargo bench --bench handshake -- $*"
cargo bench --bench handshake -- "$@"
