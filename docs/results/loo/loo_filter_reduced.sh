#!/usr/bin/env bash
# Issue 25's leave-one-out table at a REDUCED setting, for the parametrisation that came closest on the held-out
# Transformer (ensemble-em `pattern: filter`, docs/defenses_optimised.md "(c)"): for each trainer of recipes/loo/,
# the class filters are optimised by an ensemble WITHOUT that trainer's (architecture, front-end) on 60 training
# clips a class (600), 2 rounds, 20 dB per clip, the demo key; then
#   - lab run: the trainer on clean and on protected clips, seeds 0,1,2, with the quality section (PESQ, STOI, FAD)
#     of the protected training clips;
#   - lab attack: the trainer under projection, strong-augment and codec (attacks that use no clean clips).
# One optimisation per recipe, cached (~/.cache/lab/protections, with a checkpoint after every round) and shared by
# both commands and all seeds. Resumable: a recipe whose lab run finished is not run again; lab attack keeps its cells.
# One thread; about 15 min a recipe on a shared 2-core machine (FULL=1, below: hours a recipe).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export LAB_DATA_DIR="${LAB_DATA_DIR:-../shared/data}"
LAB="${LAB:-.venv/bin/lab}"
OUT="${OUT:-runs}/loo-filter-reduced"
COMMON=(--set data.max_train_per_class=60 --set defense.max_rounds=2 --set defense.pattern=filter
        --set train.num_threads=1 --seeds 0,1,2)
if [ "${FULL:-0}" = 1 ]; then
    # FULL=1: the full setting, all 2,700 training clips and 5 rounds (about 900 s a round on one thread: ~75 min of
    # optimisation a recipe before any training, kept round by round, so it can be spread over sessions)
    OUT="${OUT%-reduced}-full"
    COMMON=(--set defense.max_rounds=5 --set defense.pattern=filter --set train.num_threads=1 --seeds 0,1,2)
fi
# RECIPES picks and orders the trainers (names of recipes/loo/*.yaml), so two copies of this script can share the work
# on two cores without touching the same recipe: RECIPES="cnn_mfcc transformer_mfcc" in one, "cnn_raw cnn_logmel" in
# the other (the CNN on MFCC and the Transformer share one ensemble, and so one cached optimisation).
RECIPES="${RECIPES:-cnn_mfcc lstm_mfcc transformer_mfcc cnn_logmel cnn_raw}"
for name in $RECIPES; do
    r="recipes/loo/$name.yaml"
    [ -f "$r" ] || { echo "RECIPES: no recipe $r (names of recipes/loo/*.yaml, without .yaml)" >&2; exit 2; }
    done_run=$(find "$OUT/run-$name" -name results.json 2>/dev/null | while read -r f; do
        [ -e "$(dirname "$f")/INCOMPLETE" ] || echo "$f"; done | head -1 || true)
    if [ -z "$done_run" ]; then
        $LAB run "$r" "${COMMON[@]}" --out "$OUT/run-$name"
    else
        echo "$name: lab run finished earlier ($done_run)"
    fi
    $LAB attack "$r" --type projection,strong-augment,codec --defenses ensemble-em "${COMMON[@]}" \
        --out "$OUT/attack-$name"
done
