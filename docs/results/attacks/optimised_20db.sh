#!/usr/bin/env bash
# issue 13: the optimised protections not in section 10's matrix (sample-wise EM noise, robust EM, poscuda-opt) under
# the attacks of section 6, at 20 dB per clip on recipes/matched_budget.yaml (CNN on MFCC, 10 epochs, seeds 0, 1, 2);
# then adversarial training at a fifth of its default radius (eps 0.001), the attack robust EM is meant to answer.
# Resumable: `lab attack` keeps its finished cells (defense x seed) and the same command continues.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LAB_DATA_DIR="${LAB_DATA_DIR:-../shared/data}"
LAB="${LAB:-lab}"
K=lab-demo-key-not-secret
SW="{type: em-noise, key: $K, snr_db: 20, mode: sample-wise, min_rounds: 5, max_rounds: 5, train_batches: 20}"
ROBUST=(--defense-option robust-em.mode=sample-wise --defense-option robust-em.rho=0.002
        --defense-option robust-em.min_rounds=3 --defense-option robust-em.max_rounds=3
        --defense-option robust-em.train_batches=20)
if [ "${PART:-all}" != eps ]; then
  "$LAB" attack recipes/matched_budget.yaml --set "defense=$SW" \
      --type augment,adversarial-training,codec,filter-estimate,early-stop --defenses em-noise,robust-em,poscuda-opt \
      "${ROBUST[@]}" --defense-option poscuda-opt.max_rounds=5 --seeds 0,1,2 --jobs 2 --set train.num_threads=1
fi
"$LAB" attack recipes/matched_budget.yaml --set "defense=$SW" --type adversarial-training -o eps=0.001 \
    --defenses none,em-noise,robust-em "${ROBUST[@]}" --seeds 0,1,2 --jobs 2 --set train.num_threads=1
