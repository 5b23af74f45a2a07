#!/usr/bin/env bash
# Re-measure the lab's headline MFCC numbers after the MFCC front-end fix (commit 99fb624: each clip's dB floor is
# its own; before, torchaudio floored a batch at its loudest clip). Every step is resumable: run the script again
# and finished steps are skipped (a lab run folder with results.json; sweep cells and attack cells as they finish).
# From the repository root, with LAB_DATA_DIR set (e.g. ../shared/data). THREADS=2 when nothing else runs.
set -euo pipefail
K=lab-demo-key-not-secret
LAB=${LAB:-.venv/bin/lab}
OUT=${OUT:-runs/mfcc_fix}
T="train.num_threads=${THREADS:-1}"
mkdir -p "$OUT"

# 1. the README's main job: CNN on MFCC, PosCUDA default, seeds 0,1,2
if ! ls "$OUT"/main/fsdd_cnn/*/results.json >/dev/null 2>&1; then
  $LAB run recipes/fsdd_cnn.yaml --set "$T" --out "$OUT/main"
fi

# 2. matched budget at 20 dB per clip (docs/results.md section 5), seeds 0,1,2
$LAB sweep recipes/matched_budget.yaml --seeds 0,1,2 --set "$T" --out "$OUT/matched_20" --grid "defense={type: em-noise, key: $K, snr_db: 20, mode: class-wise, max_rounds: 5},{type: classwise-noise, key: $K, snr_db: 20},{type: ar-noise, key: $K, snr_db: 20},{type: noise-patch, key: $K, snr_db: 20}"

# 3. class-wise EM noise at 20 dB under the reviewer's strongest attacks (issue 24's bar: strong-augment), seeds 0,1,2
$LAB attack recipes/matched_budget.yaml --set "defense={type: em-noise, key: $K, snr_db: 20, mode: class-wise, max_rounds: 5}" \
    --type augment,strong-augment,projection --defenses none,em-noise --seeds 0,1,2 --set "$T" --out "$OUT/attack_em20"

# 4. every architecture on MFCC at PosCUDA's default (docs/results.md section 2): CNN 8 epochs, LSTM and Transformer 15
$LAB sweep recipes/paper_fsdd.yaml --grid 'model={type: cnn}' --grid features.type=mfcc --seeds 0,1,2 --set "$T" --out "$OUT/paper_cnn"
$LAB sweep recipes/paper_fsdd.yaml --grid 'model={type: lstm},{type: transformer}' --grid features.type=mfcc --seeds 0,1,2 \
    --set "$T" --set train.epochs=15 --out "$OUT/paper_seq15"
