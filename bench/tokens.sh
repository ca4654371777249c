#!/usr/bin/env bash
# Benchmark: client_credentials tokens per second at POST /token
# (client_secret_basic, EdDSA-signed RFC 9068 JWT), with the load generator
# (wrk, from Debian's packages) on the same machine.
#
#   bench/tokens.sh [seconds] [connections] [threads]
#
# Prints the rate, the latency percentiles and the share of non-200 answers.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15}
CONNECTIONS=${2:-64}
THREADS=${3:-1}
PORT=${PORT:-18181}

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (apt-get)" >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

cargo build --release --quiet
DATA=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
./target/release/licensegate --data-dir "$DATA" --listen 127.0.0.1:$PORT demo >/dev/null 2>&1
# One client at full speed: rate limits off (they would measure themselves).
LICENSEGATE_RATE_LIMIT_CLIENT=0 LICENSEGATE_RATE_LIMIT_ADDRESS=0 RUST_LOG=warn ${PERF_CMD:-} ./target/release/licensegate --data-dir "$DATA" --listen 127.0.0.1:$PORT serve >"$DATA/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done

CREDS=$(python3 -c "import json,sys; c=json.load(open('$DATA/demo-credentials.json'))['clients'][0]; print(c['client_id']+':'+c['client_secret'])")
BASIC=$(printf '%s' "$CREDS" | base64 -w0)
curl -sf -u "$CREDS" -d grant_type=client_credentials http://127.0.0.1:$PORT/token >/dev/null

cat >"$DATA/token.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $BASIC"
local bad = 0
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("tokens/s: %.0f\n", summary.requests / (summary.duration / 1e6)))
  io.write(string.format("latency p50 %.2f ms, p99 %.2f ms\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  io.write(string.format("errors: %d non-2xx/3xx, %d socket errors\n", summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

echo "licensegate client_credentials: ${DURATION}s, $CONNECTIONS connections, $THREADS wrk thread(s), $(nproc) cores"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$DATA/token.lua" http://127.0.0.1:$PORT/token
