#!/usr/bin/env bash
# Benchmark: CPU instructions per retrieval, counted by valgrind's callgrind,
# so the figure is the same from run to run whatever else the host is doing
# (the wall-clock benchmarks on this 2-core machine vary by a factor of two
# from one hour to the next; instruction counts do not).
#
#   bench/instructions.sh [N] [BINARY]
#
# Runs the consent benchmark's retrieval phase (benches/consent.rs, the
# in-process load generator, 16 concurrent, every read audited durably, the
# open loop off) under callgrind twice, with N and 2N retrievals (N = 3000
# unless given), and prints the difference divided by N: the instructions of
# one more retrieval, everything included (HTTP, token check, policy
# decision, receipt signature, the group commit on SQLite's thread, and the
# in-process generator's own HTTP client, the same for every build). Setting
# up (demo data, Argon2 hashes, token issue) cancels out. Then the functions
# that make up most of it, by their own instructions per retrieval.
#
# The Ed25519 nonces that receipts use are made ahead, in idle time, by the
# pool's own thread (src/keys/nonces.rs): it fills its 16,384 once at the
# start and again only once half are used, which the default N does not
# reach in either run, so the figure is the request's path without them.
# Each nonce is about 209,500 instructions more (2026-12-06), made on a core
# nothing else wanted.
#
# BINARY: a consent benchmark executable built before (to compare two builds
# of the same code base: copy target/release/deps/consent-* away first);
# otherwise it is built here (`cargo bench --no-run`, fat LTO: 8-20 minutes
# from scratch on the 2-core machine). One run takes about 2 minutes.
#
# Note: under valgrind, ring's SHA-256 takes its AVX path, not the SHA
# extensions the CPU has, so SHA-256 counts several times what it costs on
# the hardware; everything else counts as it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}
BIN=${2:-}

if ! command -v valgrind >/dev/null 2>&1; then
  echo "installing valgrind (apt-get)" >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi

if [[ -z "$BIN" ]]; then
  BIN=$(cargo bench --bench consent --no-run --message-format=json |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "consent" and m.get("executable"):
        print(m["executable"])')
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

for n in "$N" $((2 * N)); do
  LICENSEGATE_BENCH_LOAD=in-process LICENSEGATE_BENCH_RATE=0 RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$n" "$BIN" "$n" 16 retrievals \
    >"$OUT/log.$n" 2>&1 || { tail -20 "$OUT/log.$n" >&2; exit 1; }
  grep -q "^retrievals: .*($n requests" "$OUT/log.$n" || { echo "the run of $n retrievals did not finish:" >&2; tail -20 "$OUT/log.$n" >&2; exit 1; }
  callgrind_annotate --auto=no --threshold=100 "$OUT/cg.$n" >"$OUT/self.$n"
done

python3 - "$OUT/self.$N" "$OUT/self.$((2 * N))" "$N" <<'PY'
import collections, re, sys

def load(path):
    total, per = 0, collections.Counter()
    for line in open(path):
        m = re.match(r"\s*([0-9,]+) \(\s*[0-9.]+%\)\s+(.*)", line)
        if not m:
            continue
        count, name = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in name:
            total = count
            continue
        name = re.sub(r"\s*\[[^\]]*\]$", "", name)
        name = name.split(":", 1)[1] if ":" in name else name
        per[name[:110]] += count
    return total, per

(t1, a), (t2, b), n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
per = (t2 - t1) / n
print(f"instructions per retrieval: {per:,.0f} (callgrind, {n} and {2 * n} retrievals)")
diff = sorted(((b[k] - a.get(k, 0)) / n, k) for k in b)
for v, k in reversed(diff[-15:]):
    print(f"  {v:9,.0f} {100 * v / per:5.1f}%  {k}")
PY
