#!/usr/bin/env bash
# Side by side, in one run on this machine: licensegate (release build, SQLite,
# demo data) and node oidc-provider (bench/peer, in memory) on the same flows —
# client_credentials with JWT access tokens (client_secret_basic; EdDSA for
# licensegate, ES256 for the peer) and token introspection — with wrk (Debian)
# as the load generator on the same machine. Prints one table and the ratios,
# then licensegate's retrievals per second with p50/p99 (cargo bench --bench
# consent: a consent's token reading one license, every read durably audited;
# oidc-provider has no such flow, and the token's budget needs the consent
# flow, so that load generator is the benchmark's own, in process).
#
#   bench/compare.sh [seconds] [connections] [wrk threads]
#
# Installs wrk (apt-get) and oidc-provider (npm, pinned in bench/peer) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNECTIONS=${2:-64}
THREADS=${3:-1}
LG_PORT=18281
PEER_PORT=18282

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (apt-get)" >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
if [[ ! -d bench/peer/node_modules/oidc-provider ]]; then
  (cd bench/peer && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
cargo build --release --quiet

DATA=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT

./target/release/licensegate --data-dir "$DATA" --listen 127.0.0.1:$LG_PORT demo >/dev/null 2>&1
# One client at full speed: rate limits off (they would measure themselves).
LICENSEGATE_RATE_LIMIT_CLIENT=0 LICENSEGATE_RATE_LIMIT_ADDRESS=0 RUST_LOG=warn \
  ./target/release/licensegate --data-dir "$DATA" --listen 127.0.0.1:$LG_PORT serve >"$DATA/lg.log" 2>&1 &
PIDS+=($!)
LG_CREDS=$(python3 -c "import json; c=json.load(open('$DATA/demo-credentials.json'))['clients'][0]; print(c['client_id']+':'+c['client_secret'])")
PEER_CREDS="bench-client:$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)"
node bench/peer/server.mjs $PEER_PORT "${PEER_CREDS%%:*}" "${PEER_CREDS#*:}" >"$DATA/peer.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:$LG_PORT/healthz >/dev/null &&
    curl -sf http://127.0.0.1:$PEER_PORT/.well-known/openid-configuration >/dev/null && break
  sleep 0.2
done

# name, url, credentials, body -> "rate p50 p99 errors"
measure() {
  local name=$1 url=$2 creds=$3 body=$4
  local basic
  basic=$(printf '%s' "$creds" | base64 -w0)
  cat >"$DATA/$name.lua" <<LUA
wrk.method = "POST"
wrk.body = "$body"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.2f %.2f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$DATA/$name.lua" "$url" | awk '/^RESULT/ {print $2, $3, $4, $5}'
}

token_of() { # url creds [extra form field] -> access token
  curl -sf -u "$2" -d grant_type=client_credentials ${3:+-d "$3"} "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['access_token'])"
}

LG_TOKEN=$(token_of http://127.0.0.1:$LG_PORT/token "$LG_CREDS")
PEER_JWT=$(token_of http://127.0.0.1:$PEER_PORT/token "$PEER_CREDS")
# Both issue JWT access tokens in the measured token flow (three dot-separated parts).
for t in "$LG_TOKEN" "$PEER_JWT"; do
  [[ $(tr -cd . <<<"$t" | wc -c) -eq 2 ]] || { echo "not a JWT access token: $t" >&2; exit 1; }
done
# oidc-provider refuses to introspect JWT access tokens ("Structured JWT Tokens
# cannot be introspected"), so its introspection run uses an opaque token;
# licensegate introspects its JWT (signature, expiry, revocation in the database).
PEER_TOKEN=$(token_of http://127.0.0.1:$PEER_PORT/token "$PEER_CREDS" resource=urn:licensegate:bench:opaque)

echo "running: ${DURATION}s per measurement, $CONNECTIONS connections, wrk $THREADS thread(s), $(nproc) cores; servers and load generator share the machine" >&2
LG_TOK=$(measure lg-token http://127.0.0.1:$LG_PORT/token "$LG_CREDS" "grant_type=client_credentials")
PEER_TOK=$(measure peer-token http://127.0.0.1:$PEER_PORT/token "$PEER_CREDS" "grant_type=client_credentials")
LG_INT=$(measure lg-introspect http://127.0.0.1:$LG_PORT/introspect "$LG_CREDS" "token=$LG_TOKEN")
PEER_INT=$(measure peer-introspect http://127.0.0.1:$PEER_PORT/token/introspection "$PEER_CREDS" "token=$PEER_TOKEN")

python3 - "$LG_TOK" "$PEER_TOK" "$LG_INT" "$PEER_INT" <<'PY'
import sys
rows = [("client_credentials (JWT)", sys.argv[1], sys.argv[2]), ("introspection", sys.argv[3], sys.argv[4])]
print(f"{'flow':26} {'server':14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
for flow, lg, peer in rows:
    l, p = lg.split(), peer.split()
    print(f"{flow:26} {'licensegate':14} {float(l[0]):9.0f} {float(l[1]):8.2f} {float(l[2]):8.2f} {int(l[3]):7d}")
    print(f"{'':26} {'oidc-provider':14} {float(p[0]):9.0f} {float(p[1]):8.2f} {float(p[2]):8.2f} {int(p[3]):7d}")
    print(f"{'':26} {'ratio':14} {float(l[0]) / max(float(p[0]), 1):9.2f}x")
PY

# The servers above are done; the retrieval run has the machine to itself.
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
echo
echo "licensegate retrievals (GET /api/v1/licenses/{id}, SQLite, $CONNECTIONS connections, wrk):"
cargo bench --quiet --bench consent -- $((DURATION * 2000)) "$CONNECTIONS" retrievals 2>/dev/null | grep '^retrievals:'
