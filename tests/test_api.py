"""The Python API: ``import lab`` is cheap and exports the documented functions, and the worked example of
docs/api.md runs as written (its first block, where things go, pointed at a temporary folder) on a slice of the real
FSDD copy."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "api.md"


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_import_lab_is_cheap_and_exports_the_api():
    code = ("import sys, lab; heavy = [m for m in ('torch', 'lightning', 'lab.experiment') if m in sys.modules]; "
            "print(heavy, sorted(lab.__all__))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("] ")[0] == "["  # nothing heavy imported by `import lab`
    import lab
    for name in ("load_recipe", "recipe_from_dict", "load_data", "protect_clips", "new_key_file",
                 "protect_collection", "run", "read_run", "LabError", "__version__"):
        assert name in lab.__all__ and getattr(lab, name) is not None
        if callable(getattr(lab, name)) and name != "LabError":
            assert getattr(lab, name).__doc__, name
            assert f"lab.{name}(" in DOC.read_text(), f"{name} is not in docs/api.md"


def test_recipe_mistakes_raise_lab_error():
    import lab
    with pytest.raises(lab.LabError, match="train.epochs: Input should be greater than or equal to 1"):
        lab.recipe_from_dict({"train": {"epochs": 0}})
    assert lab.recipe_from_dict({"model": {"type": "lstm"}}).model.type == "lstm"


def test_the_documented_example_runs(fsdd_dir, tmp_path, monkeypatch, capsys):
    blocks = doc_blocks()
    assert "OUT = " in blocks[0] and "KEY = " in blocks[0]  # the first block says where things go
    audio = tmp_path / "my_recordings"
    for digit in ("0", "1"):
        (audio / digit).mkdir(parents=True)
        for f in sorted((fsdd_dir / "recordings").glob(f"{digit}_theo_*.wav"))[:3]:
            shutil.copy(f, audio / digit / f.name)
    settings = {"OUT": tmp_path / "runs", "AUDIO": audio, "PROTECTED": tmp_path / "protected",
                "KEY": tmp_path / "owner.key"}
    monkeypatch.chdir(REPO)  # the example names recipes/fsdd_cnn.yaml, as from the repository root
    monkeypatch.setenv("LAB_DATA_DIR", str(fsdd_dir))
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    import torch
    torch.set_num_threads(1)
    namespace: dict = {"Path": Path, **settings}
    for block in blocks[1:]:
        exec(compile(block, str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out

    recipe, train, test = namespace["recipe"], namespace["train"], namespace["test"]
    assert recipe.train.epochs == 1 and recipe.seeds == [0] and len(train) == 200 and len(test) == 50
    assert "train.accelerator: 'gpux' is not an accelerator" in printed
    protected, protection = namespace["protected"], namespace["protection"]
    assert protected.shape == train.waveforms.shape and not torch.equal(protected, train.waveforms)
    assert protection.to_dict()["key_fingerprint"] == "498f7adb33a372b0"  # the recipe's demo key

    results, run_dir = namespace["results"], namespace["run_dir"]
    assert run_dir.parent == tmp_path / "runs" / "fsdd_cnn" and (run_dir / "results.json").is_file()
    assert not (run_dir / "INCOMPLETE").exists()
    assert 0.0 <= results["accuracy"]["protected_model/clean_test"]["mean"] <= 1.0
    # the model read back scores the test clips as the run did
    assert namespace["on_clean"] == pytest.approx(
        results["per_seed"][0]["protected_model"]["clean_test"]["accuracy"], abs=1e-6)
    assert namespace["on_protected"] == pytest.approx(
        results["per_seed"][0]["protected_model"]["protected_test"]["accuracy"], abs=1e-6)

    summary = namespace["summary"]
    assert summary["protected"] == 6 and not summary["failed"]
    assert sorted(p.relative_to(tmp_path / "protected").as_posix()
                  for p in (tmp_path / "protected").rglob("*.wav")) == sorted(
        p.relative_to(audio).as_posix() for p in audio.rglob("*.wav"))
    assert (tmp_path / "owner.key").stat().st_mode & 0o777 == 0o600


def test_read_run_refuses_an_unfinished_folder(tmp_path):
    import lab
    from lab.rundir import mark_incomplete
    mark_incomplete(tmp_path, "interrupted (Ctrl-C): 0 of 1 seed trained")
    with pytest.raises(lab.LabError, match=r"is not a finished lab run \(INCOMPLETE: interrupted \(Ctrl-C\)"):
        lab.read_run(tmp_path)
