#!/usr/bin/env bash
# Instructions per PROTECT+UNPROTECT round trip, engine vs plain openmls, in
# one run of the criterion bench binary under callgrind. Instruction counts
# do not move with the load of a shared machine (criterion's times do), so
# this is the ratio to trust on a busy 2-core VM; BENCHMARKS.md gives both.
# Needs valgrind and python3. Usage: scripts/bench-instructions.sh [SIZE...]
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-100 1024}")
cargo bench -p mmls-core --bench engine --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/engine-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '| payload | mmls (memory store) | openmls | mmls throughput vs openmls |\n|---|---|---|---|\n'
for size in ${sizes[*]}; do
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$size" "$bin" \
    --bench "mem/roundtrip/$size\$|openmls/roundtrip/$size\$" --profile-time 3 >/dev/null 2>&1
  python3 - "$out/cg.$size" "$size" <<'PY'
import collections, re, sys
names, calls, cost = {}, collections.Counter(), collections.Counter()
cfn = None
lines = open(sys.argv[1]).read().splitlines()
i = 0
while i < len(lines):
    line = lines[i]
    m = re.match(r'^(c?fn)=\((\d+)\)(?: (.*))?', line)
    if m:
        kind, ident, name = m.groups()
        if name:
            names[ident] = name.strip()
        if kind == 'cfn':
            cfn = names.get(ident, ident)
    m = re.match(r'^calls=(\d+)', line)
    if m and cfn:
        calls[cfn] += int(m.group(1))
        # The next line is the call's inclusive cost: position, then Ir.
        cost[cfn] += int(lines[i + 1].split()[1])
        i += 1
    i += 1
def per(prefix):
    p, u = prefix + '::protect', prefix + '::unprotect'
    return cost[p] / calls[p] + cost[u] / calls[u]
mmls, base = per('engine::Bench'), per('engine::Baseline')
print(f"| {sys.argv[2]} B | {mmls/1e6:.3f} M instr | {base/1e6:.3f} M instr | **{base/mmls:.2f}x** |")
PY
done
