"""Third-party plugins: a defense and an attack from a module outside the lab (tests/plugins_example/tiny_plugins.py,
public interface only) are found through $LAB_PLUGINS or an entry point of the group ``lab.plugins``, without
editing any lab file, and work in ``lab list``, recipe validation, ``lab run`` and ``lab attack``."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "tests.plugins_example.tiny_plugins"
TINY = ["--set", "data.max_train_per_class=10", "--set", "data.max_test_per_class=5", "--set", "train.epochs=1",
        "--set", "train.progress=false", "--set", "train.num_threads=1", "--seeds", "0"]


def lab(*args: str, plugins: str | None = None, pythonpath: list[Path] = (), data: Path | None = None,
        python: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LAB_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["COLUMNS"] = "300"
    if plugins is not None:
        env["LAB_PLUGINS"] = plugins
    if data is not None:
        env["LAB_DATA_DIR"] = str(data)
    command = [sys.executable, *(python or ["-m", "lab", *args])]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def listed(proc: subprocess.CompletedProcess, kind: str) -> list[str]:
    """The names on ``kind``'s row of ``lab list``'s table."""
    (row,) = [line for line in proc.stdout.splitlines() if line.replace("│", " ").split()[:1] == [kind]]
    return [n.strip() for n in row.replace("│", " ").split(None, 1)[1].split(",")]


def entry_point_dir(tmp_path: Path, value: str = PLUGIN) -> Path:
    """A folder that, on sys.path, holds an installed distribution declaring ``value`` in the group lab.plugins
    (what ``pip install`` of a package with that entry point leaves in site-packages)."""
    info = tmp_path / "site" / "tiny_lab_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-lab-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lab.plugins]\ntiny = {value}\n")
    return tmp_path / "site"


@pytest.fixture
def tiny(monkeypatch):
    """The plugin module imported in this process; the registries are put back as they were afterwards (other
    tests compare this process's registries with what a fresh `lab` sees)."""
    import attacks
    import defenses
    from defenses.base import Protection
    saved = dict(defenses.DEFENSES._items), dict(attacks.ATTACKS._items), dict(Protection.types)
    module = importlib.import_module(PLUGIN)
    yield module
    sys.modules.pop(PLUGIN, None)
    for registry, items in zip((defenses.DEFENSES._items, attacks.ATTACKS._items, Protection.types), saved):
        registry.clear()
        registry.update(items)


# --- the plugins themselves (one test each, through the public interface) ----------------------------------------

def test_dc_offset_defense(tiny):
    from defenses import DEFENSES, Protection, build_defense
    from lab.config import parse_plugin
    assert "dc-offset" in DEFENSES.names()
    cfg = parse_plugin(DEFENSES, {"type": "dc-offset", "key": "a-plugin-key-123", "amplitude": 0.05}, "defense")
    prot = build_defense(cfg).derive(10, 8000)
    again = build_defense(cfg).derive(10, 8000)
    other = build_defense(parse_plugin(DEFENSES, {"type": "dc-offset", "key": "another-key-456", "amplitude": 0.05},
                                       "defense")).derive(10, 8000)
    assert torch.equal(prot.offsets, again.offsets) and not torch.equal(prot.offsets, other.offsets)
    assert prot.offsets.abs().max() <= 0.05 and len(set(prot.offsets.tolist())) == 10
    x, y = torch.zeros(20, 100), torch.arange(20) % 10
    out = prot.apply(x, y)
    assert torch.equal(out, prot.offsets[y][:, None].expand(20, 100)) and torch.equal(x, torch.zeros(20, 100))
    record = json.loads(json.dumps(prot.to_dict()))
    assert "a-plugin-key-123" not in json.dumps(record)
    assert torch.equal(Protection.from_dict(record).apply(x, y), out)
    assert prot.file_by_file and prot.patch_spans(y, 100) is None  # declared capabilities, and a default


def test_gain_jitter_attack(tiny):
    from attacks import AttackContext, build_attack
    attack = build_attack({"type": "gain-jitter", "jitter": 0.1})
    x = torch.ones(8, 50)
    ctx = AttackContext(clean=x, protected=x, labels=torch.arange(8), lengths=torch.full((8,), 50), protection=None,
                        sample_rate=8000, num_classes=8, seed=3)
    attack.start(ctx)
    first = attack.transform_batch(x, ctx.labels, None)
    attack.start(ctx)
    assert torch.equal(attack.transform_batch(x, ctx.labels, None), first), "randomness from the training seed"
    gains = first[:, 0]
    assert ((gains >= 0.9) & (gains <= 1.1)).all() and len(set(gains.tolist())) == 8
    assert (first == gains[:, None]).all() and attack.per_batch
    assert attack.record()["measured"] == {"batches": 1}  # start() begins a new training run
    attack.transform_batch(x, ctx.labels, None)
    assert attack.record() == {"type": "gain-jitter", "params": {"jitter": 0.1}, "measured": {"batches": 2}}


def test_the_contract_suite_checks_the_plugins(tmp_path):
    """tests/test_contracts.py, run with the plugin module in $LAB_PLUGINS, checks the plugins as it checks the
    built-ins (it parametrises over the registries after discovery): every contract test of dc-offset and gain-jitter
    passes, and none is skipped (dc-offset is keyed, rebuilt from its record and file by file; gain-jitter needs no
    clean clips)."""
    import xml.etree.ElementTree as ET
    report = tmp_path / "contracts.xml"
    proc = lab(python=["-m", "pytest", "tests/test_contracts.py", "-q", "-p", "no:cacheprovider", "-k",
                       "dc-offset or gain-jitter", f"--junitxml={report}"], plugins=PLUGIN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outcome = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failed = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcome[case.get("name")] = failed[0] if failed else "passed"
    ran = {name.split("[")[1].rstrip("]") for name in outcome}
    assert ran == {"dc-offset", "gain-jitter"}, outcome
    assert set(outcome.values()) == {"passed"}, outcome
    defense_tests = {n.split("[")[0] for n in outcome if n.endswith("[dc-offset]")}
    attack_tests = {n.split("[")[0] for n in outcome if n.endswith("[gain-jitter]")}
    assert len(defense_tests) >= 6 and len(attack_tests) >= 3, outcome


# --- the registry ------------------------------------------------------------------------------------------------

def test_a_registry_fills_itself_on_the_first_question_and_refuses_a_name_twice(tmp_path):
    from lab.errors import LabError
    from lab.registry import Registry
    pkg = tmp_path / "fillme"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from lab.registry import Registry, import_submodules\n"
                                     "THINGS = Registry('thing', package='fillme')\n"
                                     "import_submodules(__name__, __path__)\n")
    (pkg / "one.py").write_text("from fillme import THINGS\nTHINGS.register('one')(object)\n")
    (pkg / "two.py").write_text("from fillme import THINGS\nTHINGS.register('two')(int)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        things = importlib.import_module("fillme").THINGS
        assert things.names() == ["one", "two"]  # every module of the package, no list kept anywhere
        with pytest.raises(LabError, match="thing 'one' registered twice"):
            things.register("one")(float)
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("fillme", "fillme.one", "fillme.two"):
            sys.modules.pop(name, None)
    retired = Registry("gadget")
    retired.register("new")(object)
    retired.retire("old", "use 'new'")
    with pytest.raises(LabError, match="^gadget 'old' no longer exists: use 'new'$"):
        retired.get("old")
    assert "old" not in retired and retired.names() == ["new"]


# --- found without editing any lab file -----------------------------------------------------------------------

def test_lab_list_shows_plugins_named_in_LAB_PLUGINS_and_only_then():
    plain = lab("list")
    assert plain.returncode == 0, plain.stderr
    assert "dc-offset" not in listed(plain, "defenses") and "gain-jitter" not in listed(plain, "attacks")
    proc = lab("list", plugins=PLUGIN)
    assert proc.returncode == 0, proc.stderr
    assert "dc-offset" in listed(proc, "defenses") and "poscuda" in listed(proc, "defenses")
    assert "gain-jitter" in listed(proc, "attacks") and "filter-estimate" in listed(proc, "attacks")
    assert PLUGIN in proc.stdout


def test_lab_list_finds_plugins_through_an_entry_point(tmp_path):
    proc = lab("list", pythonpath=[entry_point_dir(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    assert "dc-offset" in listed(proc, "defenses") and "gain-jitter" in listed(proc, "attacks")
    both = lab("list", plugins=PLUGIN, pythonpath=[entry_point_dir(tmp_path / "again")])
    assert both.returncode == 0 and "registered twice" not in both.stderr, both.stderr  # one module, imported once


@pytest.mark.parametrize("where", ["env", "entry point"])
def test_a_plugin_that_cannot_be_imported_is_one_line(where, tmp_path):
    if where == "env":
        proc = lab("list", plugins=f"{PLUGIN},no_such_lab_plugin")
    else:
        proc = lab("list", pythonpath=[entry_point_dir(tmp_path, "no_such_lab_plugin")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    said = " ".join(proc.stderr.split())
    assert len(lines) == 1 and "plugin module 'no_such_lab_plugin'" in said and "ModuleNotFoundError" in said
    assert ("$LAB_PLUGINS" if where == "env" else "entry point 'tiny' of group 'lab.plugins'") in said


def test_recipe_validation_knows_the_plugins_configs(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defense: {type: dc-offset, key: a-plugin-key-123, amplitud: 0.1}\n")
    unknown = lab("run", str(recipe), "--out", str(tmp_path))
    assert unknown.returncode == 2 and "unknown defense 'dc-offset'" in unknown.stderr, unknown.stderr
    proc = lab("run", str(recipe), "--out", str(tmp_path), plugins=PLUGIN)
    assert proc.returncode == 2, proc.stderr
    assert "defense: unknown field 'amplitud' (did you mean 'amplitude'?)" in " ".join(proc.stderr.split())
    attack = lab("attack", "recipes/fsdd_cnn.yaml", "--type", "gain-jitter", "-o", "jitter=2", "--out",
                 str(tmp_path), plugins=PLUGIN, data=tmp_path)
    assert attack.returncode == 2 and "jitter: Input should be less than 1" in attack.stderr, attack.stderr
    assert not any(tmp_path.rglob("results.json"))


# --- and work end to end (real FSDD, tiny) ------------------------------------------------------------------------

def test_lab_run_with_a_plugin_defense(fsdd_dir, tmp_path):
    recipe = tmp_path / "dc.yaml"
    recipe.write_text((REPO / "recipes" / "fsdd_cnn.yaml").read_text().split("\ndefense:")[0] +
                      "\ndefense: {type: dc-offset, key: a-plugin-key-123, amplitude: 0.05}\n")
    proc = lab("run", str(recipe), *TINY, "--out", str(tmp_path / "runs"), plugins=PLUGIN, data=fsdd_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = (tmp_path / "runs").rglob("results.json")
    results = json.loads(results_file.read_text())
    assert results["recipe"]["defense"]["type"] == "dc-offset" and results["recipe"]["defense"]["amplitude"] == 0.05
    assert 0 <= results["accuracy"]["protected_model/clean_test"]["mean"] <= 1
    assert set(results["ablation"]) == {"clean", "true"}  # the default ablation: no positions
    record = json.loads((results_file.parent / "protection.json").read_text())
    assert record["defense"] == "dc-offset" and len(record["offsets"]) == 10
    # the run reads back in a new process: Protection.from_dict finds the plugin's protection by its record
    check = "from lab.rundir import load_run; import sys; print(type(load_run(sys.argv[1]).protection).__name__)"
    back = lab(plugins=PLUGIN, python=["-c", check, str(results_file.parent)])
    assert back.returncode == 0 and back.stdout.strip() == "DCOffsetProtection", back.stderr


def test_lab_attack_with_a_plugin_attack_and_defense(fsdd_dir, tmp_path):
    proc = lab("attack", "recipes/fsdd_cnn.yaml", "--type", "gain-jitter", "--defenses", "none,dc-offset", *TINY,
               "--out", str(tmp_path), plugins=PLUGIN, data=fsdd_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = tmp_path.rglob("results.json")
    results = json.loads(results_file.read_text())
    assert results["defenses"] == ["none", "dc-offset"] and results["columns"] == ["no attack", "gain-jitter"]
    for d in results["defenses"]:
        assert 0 <= results["accuracy"][d]["gain-jitter"]["values"][0] <= 1
    (record,) = results["attack_records"]["dc-offset"]["gain-jitter"]
    assert record["params"] == {"jitter": 0.2} and record["measured"]["batches"] >= 1
    assert "worst case" in proc.stdout
