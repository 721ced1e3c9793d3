#!/bin/bash
# Adversary kinds against an audited round (issue 14, first part): one coordinator (every update
# audited, ban at the first misbehaviour, S = 0) on the demo model and task, 2 honest peers and 8
# adversaries (node --fault). The adversaries that attack from the first version join first; the
# lazy peer and the honest ones after each of them has had an update checked. Prints, per peer,
# accepted updates, refusals by reason, the step of its first refusal and whether it was banned.
#   bench/adversaries.sh BASE_MODEL_DIR [OUT] [SEED]   (a base: `cohort demo` leaves one in <dir>/base)
#   ADAPTIVE=1: the recommended open-round settings instead (adaptive trust, trust_after 10, a 2 %
#   floor); STEPS=N: a longer round (default 8).
set -eu
C=${COHORT:-build/app/cohort}
. "$(dirname "$0")/round.sh"
BASE=$(realpath $1)
OUT=${2:-/tmp/cohort-adversaries}
SEED=${3:-1}
STEPS=${STEPS:-8}
if [ "${ADAPTIVE:-0}" = 1 ]; then
  VERIFY="recompute_fraction = 0.02
adaptive_trust = true
trust_after = 10"
else
  VERIFY="recompute_fraction = 1.0"
fi
rm -rf $OUT && mkdir -p $OUT/keys
cat > $OUT/round.toml <<TOML
[round]
id = "adversaries"
steps = $STEPS
prompts_per_step = 16
staleness_bound = 0
lease_timeout_s = 60
data_dir = "$OUT/round"
seed = $SEED
linger_s = 2
[network]
listen = "127.0.0.1:0"
status_listen = "127.0.0.1:0"
[model]
path = "$BASE"
[task]
name = "arith"
digits = 2
[grpo]
group_size = 8
lr = 3e-4
loss = "dapo"
gradient_codec = "raw"
[sampling]
max_new_tokens = 16
[verification]
$VERIFY
ban_after = 1
TOML
start_coordinator $OUT/round.toml $OUT/round $OUT/coordinator.log
node() {  # name, then node flags
  name=$1; shift
  $C node run --coordinator 127.0.0.1:$PORT --coordinator-key $KEY --key $OUT/keys/$name.key \
    --name $name --threads 1 --give-up-after 30 --max-backoff 1 "$@" > $OUT/$name.log 2>&1 &
}
for kind in sign-flip scaled noise nan zero stop-only cherry-pick; do node $kind --fault $kind --max-batch 2; done
for i in $(seq 1 600); do
  n=$(sqlite3 $OUT/round/ledger.sqlite "SELECT COUNT(DISTINCT peer) FROM updates" 2>/dev/null || echo 0)
  [ "$n" -ge 7 ] && break; sleep 0.2
done
node lazy --fault lazy --max-batch 2
node honest-a --max-batch 4
node honest-b --max-batch 4
wait $COORD || true
sqlite3 -separator ' | ' $OUT/round/ledger.sqlite "
  SELECT p.name,
         (SELECT COUNT(*) FROM updates u WHERE u.peer = p.peer AND u.accepted = 1),
         (SELECT COUNT(*) FROM updates u WHERE u.peer = p.peer AND u.audited = 1) || ' audited',
         COALESCE((SELECT GROUP_CONCAT(reason || ' ' || n, ', ') FROM
                    (SELECT reason, COUNT(*) AS n FROM updates u WHERE u.peer = p.peer AND u.accepted = 0 GROUP BY reason)), '-'),
         COALESCE((SELECT MIN(step) FROM updates u WHERE u.peer = p.peer AND u.accepted = 0), '-'),
         (SELECT COUNT(*) > 0 FROM refusals r WHERE r.peer = p.peer AND r.reason = 'banned')
  FROM peers p ORDER BY p.name;
  SELECT 'steps applied: ' || COUNT(*) FROM steps;"
