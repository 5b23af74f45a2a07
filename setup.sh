#!/usr/bin/env bash
# Set up the lab in ./.venv on a fresh machine: Python packages pinned in pyproject.toml, then torchaudio made to
# work on a CPU-only torch, then a check that everything imports. Safe to run again (it only installs what is missing).
# LAB_EXTRAS: optional extras of pyproject.toml to install too, comma-separated (CI sets hf: Hugging Face datasets
# and torchcodec, which also need FFmpeg's shared libraries: Debian's ffmpeg package; with hf named here, the
# round-trip test fails instead of skipping when they cannot load).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# A run that finished leaves a stamp of what it installed (pyproject.toml, the extras, the Python); a second run with
# the same stamp skips pip (CI sets up once before its checks start, then runs the README's command, which sets up
# again) and still checks the imports below.
stamp=".venv/.lab-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=${LAB_EXTRAS:-} $(.venv/bin/python -V 2>&1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -f "$stamp"
  # (pip here warns about local index folders that do not exist; those lines are noise and are filtered out)
  .venv/bin/python -m pip install --quiet -e ".[test${LAB_EXTRAS:+,$LAB_EXTRAS}]" \
    2> >(grep -v "^WARNING: Location .* is ignored" >&2)
fi

# The torchaudio wheel on PyPI is built for CUDA; on a CPU-only torch its compiled extension cannot load
# (libc10_cuda.so missing). torchaudio runs in pure-Python mode without it, which covers everything the lab uses.
.venv/bin/python - <<'PY'
import glob, os, importlib.util, torch
if torch.version.cuda is None:
    lib = os.path.join(os.path.dirname(importlib.util.find_spec("torchaudio").origin), "lib")
    removed = [p for p in glob.glob(os.path.join(lib, "*.so"))]
    for p in removed:
        os.remove(p)
    if removed:
        print(f"setup: CPU-only torch {torch.__version__}: removed torchaudio's CUDA extension ({len(removed)} files)")
PY
.venv/bin/python -c "import torchaudio, lightning, torchmetrics, audiomentations, lab.cli, defenses; \
print('setup: ok (torch', __import__('torch').__version__, '| torchaudio', torchaudio.__version__, ')')"
echo "$want" > "$stamp"
