"""Print the ingredient ablation of docs/results/loo/ablation_reduced.sh (markdown), with the full configuration's
row from the leave-one-out sweep (the Transformer on MFCC held out): per row the trainer's clean-test accuracy
without an attack and under each attack (3 trainer seeds), the worst case, and the quality of the protected clips.

    python docs/results/loo/ablation_table.py runs
"""
from __future__ import annotations

import sys
from pathlib import Path

from loo_table import ATTACKS, attack_rows, cell, finished_run

ROWS = [("full: ensemble of 4, EOT (2 draws), class filters", "loo-filter-reduced", "transformer_mfcc"),
        ("- ensemble: em-filter, one surrogate (CNN on MFCC), no EOT", "loo-ablation-reduced", "no-ensemble"),
        ("- EOT: the ensemble without transformations", "loo-ablation-reduced", "no-eot"),
        ("- class filters: the timing-locked waveform patterns", "loo-ablation-reduced", "waveform"),
        ("+ masking budget (margin 0 dB) on the full configuration", "loo-ablation-reduced", "masking"),
        ("+ codec proxy in half the EOT draws (eot.codec_p 0.5)", "loo-ablation-reduced", "codec-eot"),
        ("sample-wise: every clip its own noise (ensemble and EOT as the full row)", "loo-ablation-reduced",
         "sample-wise")]


def main(root: Path) -> None:
    print("| configuration | no attack | " + " | ".join(ATTACKS) + " | worst case | PESQ nb mean / worst 5% | "
          "log-mel FAD (floor) | commit |")
    print("|---" * (6 + len(ATTACKS)) + "|")
    for label, folder, name in ROWS:
        rows, run = attack_rows(root / folder / f"attack-{name}"), finished_run(root / folder / f"run-{name}")
        if not rows:
            print(f"| {label} | (not run yet) |" + " |" * (4 + len(ATTACKS)))
            continue
        values = {a: rows[a] for a in ["no attack", *ATTACKS] if a in rows}
        worst = max((m, a) for a, (m, _, _) in values.items())
        quality = "- | -"
        if run is not None:
            pesq, fad = run["quality"]["perceptual"]["metrics"]["pesq"], run["quality"]["fad"]["backends"]["logmel"]
            quality = (f"{pesq['mean']:.2f} / {pesq['worst5']:.2f} | {fad['protected_vs_clean']['fad']:.1f} "
                       f"({fad['clean_floor']['fad']:.1f})")
        commit = run["provenance"]["git"]["commit"][:7] if run else "?"
        print(f"| {label} | " + " | ".join(cell(*values[a][:2]) if a in values else "-"
                                           for a in ["no attack", *ATTACKS])
              + f" | {worst[0]:.3f} ({worst[1]}) | {quality} | {commit} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"))
