#!/bin/sh
# Install what Tern needs and run the whole test suite.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build-guest.sh >/dev/null
swift build --build-tests 2>&1 | tail -n 1
swift test --skip-build 2>&1
