#!/usr/bin/env bash
# Issue 25's ingredient ablation at the reduced setting, on the trainer the ensemble does not contain (the
# Transformer on MFCC, recipes/loo/transformer_mfcc.yaml: 60 training clips a class, 2 rounds, 20 dB, the demo key),
# around the closest configuration, ensemble-em `pattern: filter` (the leave-one-out sweep's row): each row takes one
# ingredient away or adds the masking budget. Per row: lab attack (no attack, projection, strong-augment, codec;
# trainer seeds 0,1,2) and lab run --seeds 0 for the quality of the protected clips (PESQ, STOI, FAD); one
# optimisation per row, cached and shared. Resumable (a finished lab run is not run again; lab attack keeps cells).
#   no-ensemble : em-filter, one surrogate (CNN on MFCC, not the trainer), no EOT
#   no-eot      : the ensemble without transformations (eot.draws 0)
#   waveform    : the ensemble's timing-locked waveform patterns instead of class filters (pattern: waveform)
#   masking     : the full configuration held under the masking threshold too (masking_margin_db 0)
#   codec-eot   : the full configuration with the codec proxy among the transformations (eot.codec_p 0.5: half the
#                 draws resample to 4 kHz and quantise to 8 bits, as the codec attack does)
#   sample-wise : the ensemble with EOT making every clip its own noise (mode sample-wise; pattern waveform)
# ROWS picks the rows (default: all, in this order); a row added later runs alone with ROWS=<its name>.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LAB_DATA_DIR="${LAB_DATA_DIR:-../shared/data}"
LAB="${LAB:-.venv/bin/lab}"
OUT="${OUT:-runs}/loo-ablation-reduced"
R=recipes/loo/transformer_mfcc.yaml
K=lab-demo-key-not-secret
BASE=(--set data.max_train_per_class=60 --set train.num_threads=1)
ENS=(--set defense.max_rounds=2 --set defense.pattern=filter)
SUR="{model: {type: cnn, head: flatten, channels: [8, 16, 32]}, features: {type: mfcc, n_mfcc: 40, n_mels: 64, win_ms: 25, hop_ms: 10}}"
row() {  # NAME DEFENSE-COLUMN ARGS...
    local name=$1 column=$2
    shift 2
    $LAB attack "$R" --type projection,strong-augment,codec --defenses "$column" "${BASE[@]}" "$@" --seeds 0,1,2 \
        --out "$OUT/attack-$name"
    if [ -z "$(finished "$OUT/run-$name" || true)" ]; then
        $LAB run "$R" "${BASE[@]}" "$@" --seeds 0 --out "$OUT/run-$name"
    fi
}
finished() {  # the results.json of the runs under $1 that finished (no INCOMPLETE beside them)
    find "$1" -name results.json 2>/dev/null | while read -r f; do [ -e "$(dirname "$f")/INCOMPLETE" ] || echo "$f"; done
}
for name in ${ROWS:-no-ensemble no-eot waveform masking codec-eot sample-wise}; do
    case $name in
        no-ensemble) row no-ensemble em-filter --set "defense={type: em-filter, key: $K, snr_db: 20, max_rounds: 2, surrogate: $SUR}" ;;
        no-eot) row no-eot ensemble-em "${ENS[@]}" --set defense.eot.draws=0 ;;
        waveform) row waveform ensemble-em --set defense.max_rounds=2 ;;
        masking) row masking ensemble-em "${ENS[@]}" --set defense.masking_margin_db=0 ;;
        codec-eot) row codec-eot ensemble-em "${ENS[@]}" --set defense.eot.codec_p=0.5 ;;
        sample-wise) row sample-wise ensemble-em --set defense.max_rounds=2 --set defense.mode=sample-wise ;;
        *) echo "ROWS: no row '$name' (no-ensemble no-eot waveform masking codec-eot sample-wise)" >&2; exit 2 ;;
    esac
done
