#!/usr/bin/env bash
# The project's test command: every test of every crate, in the release
# profile (openmls + libp2p build once; debug crypto would be slow).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release --workspace "$@"
