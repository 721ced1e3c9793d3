#!/bin/bash
# The real node's throughput alone and under each attack of `cohort bench swarm` (issue 15's
# point 4), as docs/RESULTS.md reports: 60 s of work each, a 32-prompt step, G = 4, S = 1, the real
# node on 1 thread; attackers from their own loopback addresses (127.20.x.y).
set -u
C=${COHORT:-build/app/cohort}
OUT=${1:-/tmp/cohort-swarm-attacks}
SECONDS_=${SECONDS_:-60}
mkdir -p $OUT
run() {  # $1 = label, then the attack options
  label=$1; shift
  $C bench swarm --peers 0 --real-node --prompts-per-step 32 --seconds $SECONDS_ --dir $OUT/$label \
    --json-out $OUT/$label.json "$@" > $OUT/$label.log 2>&1
  python3 - $OUT $label <<'PY'
import json, sys
out, label = sys.argv[1], sys.argv[2]
j = json.load(open(f"{out}/{label}.json"))
alone = json.load(open(f"{out}/alone.json"))["real_node_groups_per_s"] if label != "alone" else j["real_node_groups_per_s"]
r = j["real_node"]
print(f"{label:13s} real node {j['real_node_groups_per_s']:6.1f} groups/s ({100*j['real_node_groups_per_s']/alone:5.1f} % of alone), "
      f"compute {100*r.get('compute_fraction',0):5.1f} %, lease p99 {r.get('lease_rtt_p99_ms',0):6.1f} ms; "
      f"attack: {j['attack_connections']} connections, {j['attack_closed']} closed by the coordinator "
      f"(held p50 {j['attack_hold_p50_s']:.1f} s, max {j['attack_hold_max_s']:.1f} s), {j['attack_joins']} joins, "
      f"{j['attack_leases']} leases taken; coordinator {100*j['coordinator_cpu_share']:.0f} % of a core")
PY
}
run alone
run half-open --attack half-open --attackers 512 --attack-addresses 32
run slowloris --attack slowloris --attackers 512 --attack-addresses 32
run storm --attack storm --attackers 64 --attack-addresses 32
run vanish --attack vanish --attackers 16 --attack-addresses 16
run vanish-close --attack vanish-close --attackers 16 --attack-addresses 16
