"""Print docs/results.md's transfer rows (one per finished sweep cell) from the cells' results.json:
`python docs/results/transfer/rows.py runs/sweeps/transfer_30_seq runs/sweeps/transfer_30_cnn_logmel ...`."""
import json
import sys
from pathlib import Path


def acc(r, name):
    a = r["accuracy"][name]
    return f"{a['mean']:.3f} ± {a['std']:.3f}"


def describe(rec):
    d = rec["defense"]
    if d["type"] == "budget":
        return f"{d['inner']['type']} (budget wrapper)"
    if d["type"] in ("em-noise", "robust-em"):  # the surrogate: its own model / features, else the recipe's
        sur = d.get("surrogate") or {}
        model = (sur.get("model") or rec["model"])["type"]
        features = (sur.get("features") or rec["features"])["type"]
        return f"{d['type']} ({d.get('mode', 'sample-wise')}, made on {model} / {features})"
    return d["type"]


for folder in sys.argv[1:]:
    for f in sorted(Path(folder).glob("cell-*/results.json")):
        r = json.loads(f.read_text())
        rec = r["recipe"]
        q = r["quality"]["protected_train_vs_clean"]
        fad = r["quality"].get("fad", {}).get("backends", {}).get("logmel", {})
        same = fad.get("protected_half_vs_clean_half", {})
        same = same.get("fad") if isinstance(same, dict) else same
        print(f"| {describe(rec)} | {rec['model']['type']} / {rec['features']['type']} | "
              f"{q['snr_db_mean']:.1f} / {q['snr_db_worst5']:.1f} | {same:.1f} | {acc(r, 'clean_model/clean_test')} | "
              f"**{acc(r, 'protected_model/clean_test')}** | {acc(r, 'protected_model/protected_test')} | "
              f"{r['provenance']['git']['commit'][:7]} | {r['seeds']} | {f.parent} |")
