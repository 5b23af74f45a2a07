#!/usr/bin/env bash
# The spread over the protection's KEY of the closest configuration of issue 25 (ensemble-em `pattern: filter`, the
# leave-one-out row of the held-out Transformer on MFCC at the reduced setting: 60 training clips a class, 2 rounds,
# 20 dB). The leave-one-out and ablation tables make ONE optimisation (the demo key) and train 3 seeds on it, so their
# spread is the trainer's; here each key is its own optimisation (the key seeds the filters' start, the
# transformations' draws and the members' initialisation), each trained on with seeds 0,1,2 under no attack,
# projection, strong-augment and codec (attacks that use no clean clips). Three demo keys, none of them secret.
# Resumable (lab attack keeps its cells; the optimisation is cached). One thread; about 12 min a key.
#   python docs/results/loo/key_spread_table.py runs/loo-key-spread
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LAB_DATA_DIR="${LAB_DATA_DIR:-../shared/data}"
LAB="${LAB:-.venv/bin/lab}"
OUT="${OUT:-runs}/loo-key-spread"
R=recipes/loo/transformer_mfcc.yaml
for i in ${KEYS:-1 2 3}; do
    case $i in
        1) key=lab-demo-key-not-secret ;;  # the key of every other table of issue 25
        *) key=lab-demo-key-$i-not-secret ;;
    esac
    $LAB attack "$R" --type projection,strong-augment,codec --defenses ensemble-em \
        --set data.max_train_per_class=60 --set defense.max_rounds=2 --set defense.pattern=filter \
        --set "defense.key=$key" --set train.num_threads=1 --seeds 0,1,2 --out "$OUT/key-$i"
done
