#!/bin/bash
# Every row of docs/RESULTS.md "A round that learns with 30 % adversaries": bench/open_round.sh for
# the clean round, `mean` without audits (SETTINGS=baseline), the mixed round and each adversary
# kind, seeds 1..SEEDS, one after the other; one line per run (see open_round.sh).
#   bench/open_rounds.sh BASE_MODEL_DIR OUT [KIND...]
set -u
BASE=$1
OUT=$2
shift 2
KINDS=${*:-clean baseline mixed sign-flip scaled noise nan zero stop-only lazy cherry-pick copycat collude false-reward rubber-stamp sybil}
mkdir -p $OUT
for seed in $(seq 1 ${SEEDS:-3}); do
  for kind in $KINDS; do
    if [ $kind = baseline ]; then
      SETTINGS=baseline $(dirname $0)/open_round.sh $BASE $OUT/run $seed clean | sed 's/^clean/baseline/'
    else
      $(dirname $0)/open_round.sh $BASE $OUT/run $seed $kind
    fi
  done
done
