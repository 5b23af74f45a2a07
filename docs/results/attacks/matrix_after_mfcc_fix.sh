#!/usr/bin/env bash
# Issue 24's matrix, after the MFCC front-end fix (99fb624): every attack (`--type all`: the ten earlier ones and the
# reviewer's projection, interpolation, strong-augment and resynthesis) against no protection, PosCUDA, class-wise
# EM noise, AR noise and the ensemble EM noise (then em-filter), on recipes/matched_budget.yaml (CNN on MFCC, 10 epochs), seeds 0,1,2.
# The noise protections are held to 20 dB per clip (the column the matrix adds for each is matched by lab attack).
# Resumable: lab attack keeps each finished cell (defense x seed) in its cell folder and the same command continues;
# about 15-30 min a cell on one thread (resynthesis alone ~170 s, adversarial training the longest), 18 cells; the
# ensemble column first optimises its noise (10 rounds, ~80 min on one thread, kept round by round in the cache).
# The headline of docs/attacks.md is the worst case over the attacks that use no clean clips (lab attack's table
# marks the attacks that need them).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LAB_DATA_DIR="${LAB_DATA_DIR:-../shared/data}"
LAB="${LAB:-.venv/bin/lab}"
K=lab-demo-key-not-secret
EM="{type: em-noise, key: $K, snr_db: 20, mode: class-wise, max_rounds: 5}"
$LAB attack recipes/matched_budget.yaml --set "defense=$EM" --type all \
    --defenses none,poscuda,em-noise,ar-noise,ensemble-em --defense-option ar-noise.snr_db=20 \
    --defense-option ensemble-em.snr_db=20 --seeds 0,1,2 --jobs "${JOBS:-2}" --set train.num_threads=1 \
    --out "${OUT:-runs}"
# em-filter (issue 25: class filters on per-clip noise), the same attacks and seeds, as its own plan (adding it to
# the command above would give that plan another id and train its finished cells again)
$LAB attack recipes/matched_budget.yaml --set "defense={type: em-filter, key: $K, snr_db: 20, max_rounds: 5}" \
    --type all --defenses em-filter --seeds 0,1,2 --jobs "${JOBS:-2}" --set train.num_threads=1 --out "${OUT:-runs}"
# the ensemble's detection AUC (docs/attacks.md, "Detection"): the optimisation the first command made, read from
# the protection cache (~2 min; without the cache it optimises again: 10 rounds, ~80 min on one thread)
$LAB detect recipes/matched_budget.yaml --set "defense=$EM" --defenses none,ensemble-em \
    --defense-option ensemble-em.snr_db=20 --seeds 0,1,2 --set train.num_threads=1 --out "${OUT:-runs}"
