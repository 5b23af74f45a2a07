#!/usr/bin/env bash
# issue 13: the class-wise EM noise made on the CNN-on-MFCC surrogate (20 dB), trained on by the CNN on raw audio
# (its own recipe, 15 epochs) and on log-mel; classwise-noise beside it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LAB_DATA_DIR="${LAB_DATA_DIR:-../shared/data}"
K=lab-demo-key-not-secret
EMF="{type: em-noise, key: $K, snr_db: 20, mode: class-wise, max_rounds: 5, surrogate: {model: {type: cnn, head: flatten, channels: [8, 16, 32]}, features: {type: mfcc, n_mfcc: 40, n_mels: 64, win_ms: 25, hop_ms: 10}}}"
lab sweep recipes/matched_budget.yaml --grid features.type=logmel \
    --grid "defense=$EMF,{type: classwise-noise, key: $K, snr_db: 20}" --jobs 2 --set train.num_threads=1 \
    --out runs/sweeps/transfer_20_cnn_logmel
lab sweep recipes/fsdd_raw_cnn.yaml --grid "defense=$EMF,{type: classwise-noise, key: $K, snr_db: 20}" \
    --jobs 2 --set train.num_threads=1 --set train.progress=false --out runs/sweeps/transfer_20_cnn_raw
