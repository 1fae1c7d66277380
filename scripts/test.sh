#!/usr/bin/env bash
# The README's test command: go vet, then every test with the race
# detector. The race detector needs cgo, which needs a C compiler; on a
# machine with only Go the tests run without it (said on stderr), unless
# COATTAIL_REQUIRE_RACE=1 (CI), which makes that an error. Arguments
# replace the package list: scripts/test.sh -run TestX ./node
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
race=(-race)
if [ "$("$GO" env CGO_ENABLED)" != 1 ]; then
  if [ "${COATTAIL_REQUIRE_RACE:-}" = 1 ]; then
    echo "test: the race detector needs cgo and a C compiler (install gcc)" >&2
    exit 1
  fi
  echo "test: no C compiler here, so no race detector (install gcc for go test -race)" >&2
  race=()
fi
"$GO" vet ./...
if [ $# -eq 0 ]; then set -- ./...; fi
exec "$GO" test "${race[@]}" -count=1 -timeout 30m "$@"
