#!/bin/bash
# The honest node's throughput alone and beside a peer that abuses leases (`cohort node run
# --fault hoard`: asks for work again and again naming every lease it got; `--fault churn`: naming a
# made-up lease), as docs/RESULTS.md reports. 10 steps x 32 prompts x G = 8, S = 1, on loopback.
set -u
C=${COHORT:-build/app/cohort}
. "$(dirname "$0")/round.sh"
BASE=${1:?usage: bench/lease_abuse.sh <model folder> (e.g. runs/demo/base)}
OUT=${2:-/tmp/cohort-lease-abuse}
run() {  # $1 = label, $2 = fault ("" for none)
  D=$OUT/$1; rm -rf $D; mkdir -p $D
  cat > $D/round.toml <<TOML
[round]
id = "abuse"
steps = 10
prompts_per_step = 32
staleness_bound = 1
data_dir = "$D/round"
linger_s = 1
[network]
listen = "127.0.0.1:0"
status_listen = ""
[model]
path = "$BASE"
[task]
name = "arith"
[grpo]
group_size = 8
lr = 1e-4
[sampling]
max_new_tokens = 16
TOML
  start_coordinator $D/round.toml $D/round $D/coordinator.log
  CP=$COORD
  if [ -n "$2" ]; then
    $C node run --coordinator 127.0.0.1:$PORT --coordinator-key $KEY --key $D/bad.key --name bad \
      --threads 1 --fault $2 --give-up-after 5 > $D/bad.log 2>&1 &
    sleep 1
  fi
  $C node run --coordinator 127.0.0.1:$PORT --coordinator-key $KEY --key $D/honest.key --name honest \
    --threads 1 --give-up-after 30 > $D/honest.log 2>&1 &
  HP=$!
  timeout 400 tail --pid=$CP -f /dev/null
  kill $HP 2>/dev/null; pkill -f "key $D/bad.key" 2>/dev/null
  python3 - $D <<'PY'
import sqlite3,sys
d=sys.argv[1]; db=sqlite3.connect(d+'/round/ledger.sqlite')
first=db.execute("select min(issued_ms) from leases").fetchone()[0]
last=db.execute("select max(applied_ms) from steps").fetchone()[0]
steps=db.execute("select count(*) from steps").fetchone()[0]
acc=db.execute("select count(*) from updates u join peers p on u.peer=p.peer where u.accepted=1 and p.name='honest'").fetchone()[0]
leases_bad=db.execute("select count(*) from leases l join peers p on l.peer=p.peer where p.name='bad'").fetchone()[0]
ref=db.execute("select reason, count(*) from refusals group by reason").fetchall()
import os
print(f"{os.path.basename(d)}: {steps} steps in {(last-first)/1000:.1f} s, honest updates {acc}, honest groups/s {steps*32/((last-first)/1000):.1f}, attacker lease rows {leases_bad}, refusals {ref}")
PY
}
run alone ""
run hoard hoard
run churn churn
