#!/bin/bash
# The KL term in a round (issue 16, point 5): the demo round (2-digit addition, 3 nodes, 60 steps,
# lr 3e-4, S = 0, FP8 codec) with beta = 0 and beta = 0.04 side by side, seeds 1..N; prints the
# held-out accuracy before/after and the mean KL per step (the coordinator's ledger), as
# docs/RESULTS.md reports. The pretrained base is made once in $OUT/base and copied to each run.
set -eu
C=${COHORT:-build/app/cohort}
OUT=${1:-/tmp/cohort-kl-rounds}
SEEDS=${SEEDS:-3}
STEPS=${STEPS:-60}
mkdir -p $OUT
if [ ! -d $OUT/base ]; then
  $C demo --dir $OUT/warmup --steps 1 --eval-n 50 > $OUT/warmup.log 2>&1
  cp -r $OUT/warmup/base $OUT/base
fi
for seed in $(seq 1 $SEEDS); do
  for beta in 0 0.04; do
    d=$OUT/beta$beta-seed$seed
    rm -rf $d && mkdir -p $d && cp -r $OUT/base $d/base
    $C demo --dir $d --steps $STEPS --seed $seed --beta $beta > $d.log 2>&1
    acc=$(grep -o 'before [0-9.]*%, after [0-9.]*%' $d.log)
    kl=$(sqlite3 $d/round/ledger.sqlite \
      "SELECT printf('%.5f %.5f %.5f %.5f', (SELECT AVG(kl) FROM steps WHERE step BETWEEN 1 AND 10),
                                            (SELECT AVG(kl) FROM steps WHERE step BETWEEN 21 AND 30),
                                            (SELECT AVG(kl) FROM steps WHERE step BETWEEN 41 AND 50),
                                            (SELECT AVG(kl) FROM steps WHERE step BETWEEN $((STEPS-9)) AND $STEPS))")
    echo "beta $beta seed $seed: held-out $acc; mean KL per token, steps 1-10 / 21-30 / 41-50 / last 10: $kl"
    rm -rf $d/round/blobs $d/round/checkpoints
  done
done
