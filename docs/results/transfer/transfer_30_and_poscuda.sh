#!/usr/bin/env bash
# issue 13, transfer at the second budget: the class-wise EM noise made on the CNN-on-MFCC surrogate at 30 dB per
# clip, and PosCUDA held to 30 dB (the budget wrapper) beside it, trained on by the models and features the owner
# did not plan for: the Transformer and the LSTM on MFCC (15 epochs), the CNN on log-mel (10 epochs) and the CNN on
# raw audio (its own recipe, 15 epochs). Then PosCUDA at 20 dB on the same four, beside the 20 dB transfer rows
# (transfer_cnn_features.sh and section 5's transfer_20 command). Seeds 0, 1, 2; every sweep is resumable (run the
# script again to continue where it stopped).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LAB_DATA_DIR="${LAB_DATA_DIR:-../shared/data}"
LAB="${LAB:-lab}"
K=lab-demo-key-not-secret
SUR="{model: {type: cnn, head: flatten, channels: [8, 16, 32]}, features: {type: mfcc, n_mfcc: 40, n_mels: 64, win_ms: 25, hop_ms: 10}}"
for DB in ${DBS:-30 20}; do  # DBS="30": the 30 dB part only
  EMF="{type: em-noise, key: $K, snr_db: $DB, mode: class-wise, max_rounds: 5, surrogate: $SUR}"
  PC="{type: budget, snr_db: $DB, inner: {type: poscuda, key: $K}}"
  DEF="defense=$EMF,$PC" OUT="runs/sweeps/transfer_${DB}"
  if [ "$DB" = 20 ]; then DEF="defense=$PC" OUT="runs/sweeps/transfer_20_poscuda"; fi  # 20 dB EM: transfer_20*
  "$LAB" sweep recipes/matched_budget.yaml --grid 'model={type: transformer},{type: lstm}' --grid "$DEF" \
      --set train.epochs=15 --jobs 2 --set train.num_threads=1 --out "${OUT}_seq"
  "$LAB" sweep recipes/matched_budget.yaml --grid features.type=logmel --grid "$DEF" \
      --jobs 2 --set train.num_threads=1 --out "${OUT}_cnn_logmel"
  "$LAB" sweep recipes/fsdd_raw_cnn.yaml --grid "$DEF" \
      --jobs 2 --set train.num_threads=1 --set train.progress=false --out "${OUT}_cnn_raw"
done
