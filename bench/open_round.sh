#!/bin/bash
# An open round of 10 peers under attack (issue 14's proof): the demo round (2-digit addition, 60 steps,
# 32 prompts of G = 8 per step, lr 3e-4, S = 0, top-k codec (audits need one without error feedback), the same pretrained base every run)
# with the open-round settings docs/ROUND_CONFIG.md recommends (adaptive trust, validators, probe
# leases, ban at the first misbehaviour), 10 node processes on loopback: 7 honest and 3 of KIND,
# or 10 honest (clean), or one each of sign-flip, lazy and copycat (mixed). Prints one line:
# held-out accuracy (500 problems) after the last step, seconds per step, the adversaries' accepted
# and refused updates, how many were banned and at which step, honest refusals, and where audits
# were recomputed (validators, spot checks, disagreements, fallbacks, the coordinator's seconds),
# with the peers' compute for the share.
#   bench/open_round.sh BASE_MODEL_DIR OUT SEED KIND
#   KIND: clean | mixed | sign-flip | scaled | noise | nan | zero | stop-only | lazy |
#         cherry-pick | copycat | collude | false-reward | rubber-stamp | sybil (each of the 3
#         processes makes a fresh key whenever its key is refused)
#   SETTINGS=baseline: `mean` without any audit (the cost-when-honest comparison);
#   SETTINGS=no-validators: the recommended settings with the coordinator auditing alone; STEPS=N;
#   PEERS=N: N peers in all (default 10); CODEC=raw: the raw codec (an exact sum whatever the
#   split of the step into leases) instead of top-k.
set -eu
C=${COHORT:-build/app/cohort}
. "$(dirname "$0")/round.sh"
BASE=$(realpath $1)
OUT=$2
SEED=$3
KIND=$4
STEPS=${STEPS:-60}
PEERS=${PEERS:-10}
CODEC=${CODEC:-topk}
if [ "${SETTINGS:-recommended}" = baseline ]; then
  VERIFY="recompute_fraction = 0.0"
elif [ "${SETTINGS:-}" = no-validators ]; then  # the coordinator recomputes every audit itself
  VERIFY="recompute_fraction = 0.02
adaptive_trust = true
trust_after = 10
probe_lease_prompts = 2
ban_after = 1"
else
  VERIFY="recompute_fraction = 0.02
adaptive_trust = true
trust_after = 10
probe_lease_prompts = 2
validators = true
validator_check_fraction = 0.1
coordinator_audits_per_step = 0.25
validator_distinct_address = false   # every process here connects from 127.0.0.1
ban_after = 1"
fi
rm -rf $OUT && mkdir -p $OUT/keys $OUT/collude
cat > $OUT/round.toml <<TOML
[round]
id = "open-round"
steps = $STEPS
prompts_per_step = 32
staleness_bound = 0
lease_timeout_s = 120
reconnect_grace_s = 5
checkpoint_interval = $STEPS
eval_every = $STEPS
eval_n = 500
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
lr = 0.0003
loss = "dapo"
gradient_codec = "$CODEC"
[sampling]
max_new_tokens = 16
[verification]
$VERIFY
TOML
t0=$(date +%s.%N)
start_coordinator $OUT/round.toml $OUT/round $OUT/coordinator.log
node() {  # name, then node flags
  name=$1; shift
  $C node run --coordinator 127.0.0.1:$PORT --coordinator-key $KEY --key $OUT/keys/$name.key \
    --name $name --threads 1 --give-up-after 30 --max-backoff 1 --max-batch 4 \
    --summary-out $OUT/$name.json "$@" > $OUT/$name.log 2>&1 &
}
case $KIND in
  clean) ADV=() ;;
  mixed) ADV=(sign-flip lazy copycat) ;;
  *) ADV=($KIND $KIND $KIND) ;;
esac
i=0
for kind in "${ADV[@]}"; do
  i=$((i + 1))
  extra=(--fault $kind)
  [ "$kind" = copycat ] && extra+=(--collude-dir $OUT/collude)
  [ "$kind" = collude ] && extra+=(--collude-dir $OUT/collude)
  node adv$i-$kind "${extra[@]}"
done
# The honest peers; the first also leaves its gradients where a copycat finds them (a colluder
# doing honest work).
node honest1 --collude-dir $OUT/collude
for h in $(seq 2 $((PEERS - ${#ADV[@]}))); do node honest$h; done
wait $COORD || true
t1=$(date +%s.%N)
L=$OUT/round/ledger.sqlite
q() { sqlite3 $L "$1"; }
adv="(SELECT peer FROM peers WHERE name LIKE 'adv%')"
hon="(SELECT peer FROM peers WHERE name LIKE 'honest%')"
acc=$(q "SELECT printf('%.1f', 100 * accuracy) FROM evals ORDER BY step DESC LIMIT 1")
steps=$(q "SELECT COUNT(*) FROM steps")
first=$(q "SELECT MIN(applied_ms) FROM steps WHERE step = 1")
last=$(q "SELECT MAX(applied_ms) FROM steps")
sps=$(python3 -c "print(f'{($last - $first) / 1000 / max(1, $steps - 1):.2f}')")
adv_ok=$(q "SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer IN $adv")
adv_no=$(q "SELECT COUNT(*) FROM updates WHERE accepted = 0 AND peer IN $adv")
reasons=$(q "SELECT COALESCE(GROUP_CONCAT(r || ' ' || n, ', '), '-') FROM (SELECT reason AS r, COUNT(*) AS n FROM
  (SELECT reason FROM updates WHERE accepted = 0 AND peer IN $adv AND reason NOT IN ('lease_expired', 'stale')
   UNION ALL SELECT reason FROM refusals WHERE peer IN $adv AND reason NOT IN ('banned')) GROUP BY reason)")
banned=$(q "SELECT COUNT(DISTINCT peer) FROM refusals WHERE reason = 'banned' AND peer IN $adv")
keys=$(q "SELECT COUNT(*) FROM peers WHERE name LIKE 'adv%'")
ban_steps=$(q "SELECT COALESCE(GROUP_CONCAT(s, '/'), '-') FROM (SELECT (SELECT COUNT(*) FROM steps WHERE applied_ms <= b.t) AS s
  FROM (SELECT peer, MIN(at_ms) AS t FROM refusals WHERE reason = 'banned' AND peer IN $adv GROUP BY peer) b ORDER BY s)")
hon_no=$(q "SELECT COUNT(*) FROM updates WHERE accepted = 0 AND peer IN $hon AND reason IN
  ('recompute_mismatch', 'not_sampled', 'bad_norm', 'malformed', 'bad_reward')")
hon_bad_audit=$(q "SELECT COUNT(*) FROM refusals WHERE reason = 'bad_audit' AND peer IN $hon")
hon_audited=$(q "SELECT COUNT(*) FROM updates WHERE audited = 1 AND peer IN $hon")
audits=$(grep -o 'audits [0-9]*: .*' $OUT/coordinator.log | tail -1)
# The typicality statistic of the updates the validators passed: |z| stays far below 8 for samples.
zmax=$(grep -o 'typicality z [-0-9.]*, [0-9.]* s: agrees' $OUT/coordinator.log | awk '{z = $3 + 0; if (z < 0) z = -z; if (z > m) m = z; n++} END {printf "%.2f over %d", m, n}')
peer_s=$(python3 -c "
import json, glob
print(f\"{sum(json.load(open(f)).get('compute_s', 0) for f in glob.glob('$OUT/*.json')):.1f}\")")
echo "$KIND seed $SEED: held-out $acc % after $steps steps, $sps s/step | adversaries: accepted $adv_ok, refused $adv_no ($reasons), banned $banned of $keys keys at step $ban_steps | honest: refused $hon_no, bad_audit $hon_bad_audit, audited $hon_audited | $audits | max |z| passed $zmax | peers' compute $peer_s s | wall $(python3 -c "print(f'{$t1 - $t0:.0f}')") s"
rm -rf $OUT/round/blobs $OUT/round/checkpoints $OUT/collude
