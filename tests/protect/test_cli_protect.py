"""The commands as a user runs them: keygen's refusals and permissions, exit codes, the key never shown or written,
and FSDD end to end with a file-name label pattern."""
from __future__ import annotations

import os
import shutil
import stat


from lab.protect import new_key_file
from lab.protect.manifest import read_manifest
from tests.protect.conftest import BAD, GOOD, private_record, tree_hashes
from tests.test_cli import lab


def test_keygen_sets_owner_only_permissions_and_refuses_to_overwrite(tmp_path, cli):
    path = tmp_path / "k"
    code, out, err = cli("keygen", str(path))
    assert code == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert len(key) >= 40 and key not in out + err
    code, _, err = cli("keygen", str(path))
    assert code == 2 and "already exists; refusing to overwrite" in err
    assert path.read_text().strip() == key
    other = tmp_path / "k2"
    new_key_file(other)
    assert other.read_text() != path.read_text()  # random, not derived from anything


def test_keygen_respects_no_umask_loophole(tmp_path):
    old = os.umask(0)
    try:
        new_key_file(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def every_byte_under(root):
    for p in root.rglob("*"):
        if p.is_file():
            yield p, p.read_bytes()


def test_key_never_in_output_logs_or_terminal(collection, tmp_path, cli):
    key_path = tmp_path / "secret.key"
    assert lab("keygen", str(key_path)).returncode == 0
    key = key_path.read_text().strip()
    out = tmp_path / "out"
    protect = lab("protect", str(collection), str(out), "--key-file", str(key_path), "--workers", "2")
    verify = lab("verify", str(out), "--key-file", str(key_path))
    for proc in (protect, verify):
        assert key not in proc.stdout and key not in proc.stderr
    bad_verify = cli("verify", str(out), "--key-file", str(collection / "cat" / "notes.txt"))  # not the key
    refused = cli("protect", str(collection), str(collection / "o"), "--key-file", str(key_path))
    for _, stdout, stderr in (bad_verify, refused):
        assert key not in stdout and key not in stderr
    for path, data in [*every_byte_under(out), *every_byte_under(tmp_path)]:  # the private record too
        assert key.encode() not in data or path == key_path, path
    # the run itself: corrupt/empty files named, non-zero exit, and a summary
    assert protect.returncode == 1
    text = " ".join(protect.stdout.split())
    for rel in BAD:
        assert rel in text
    assert f"protected {len(GOOD)} files" in text and "3 file(s) could not be protected" in text
    assert "1 non-audio files, 1 symbolic links not followed" in text
    # every output checks, but the sources that could not be protected leave the collection incomplete
    verified = " ".join(verify.stdout.split())
    assert verify.returncode == 1 and f"{len(GOOD)} ok" in verified and "verified" not in verified
    assert "incomplete: 3 source file(s) have no protected copy" in verified
    assert bad_verify[0] == 2 and "is not the one OUTPUT was protected with" in " ".join(bad_verify[2].split())
    assert refused[0] == 2 and "is inside INPUT" in " ".join(refused[2].split())


def test_verify_exit_code_on_a_missing_file(collection, key_file, tmp_path, cli):
    out = tmp_path / "out"
    cli("protect", str(collection), str(out), "--key-file", str(key_file), "--workers", "0")
    (out / "dog" / "e.aiff").unlink()
    code, stdout, _ = cli("verify", str(out), "--key-file", str(key_file), "--workers", "0")
    assert code == 1
    assert "missing dog/e.aiff" in " ".join(stdout.split())


def test_recipe_parameters_and_cli_overrides(collection, key_file, tmp_path, cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defense:\n  type: poscuda\n  key_file: /nonexistent/ignored\n  patch_seconds: 0.05\n"
                      "  blur: 0.6\n")
    out = tmp_path / "out"
    code, _, err = cli("protect", str(collection), str(out), "--key-file", str(key_file), "--recipe", str(recipe),
                       "--option", "blur=0.2", "--workers", "0")
    assert code == 1, err  # 1: the corrupt files; the rest is done
    params = private_record(out, key_file)[0]["protection"]["params"]
    assert params["patch_seconds"] == 0.05 and params["blur"] == 0.2


def test_fsdd_end_to_end_with_a_file_name_pattern(fsdd_dir, tmp_path, cli):
    """The real data: a 200-clip copy of FSDD (labels are the file-name prefix), protected and verified."""
    src = tmp_path / "recordings"
    src.mkdir()
    for p in sorted((fsdd_dir / "recordings").glob("*.wav"))[::15]:
        shutil.copy(p, src / p.name)
    before = tree_hashes(src)
    key = tmp_path / "k"
    assert cli("keygen", str(key))[0] == 0
    out = tmp_path / "out"
    code, stdout, stderr = cli("protect", str(src), str(out), "--key-file", str(key), "--labels", r"regex:^(\d+)_")
    assert code == 0, stdout + stderr
    assert tree_hashes(src) == before
    header, records, summary = read_manifest(out)
    assert header["classes"] == [str(d) for d in range(10)]
    assert all(r["label"] == r["path"].split("_")[0] for r in records)
    assert summary["files"] == len(records) == len(before) == 200
    code, stdout, _ = cli("verify", str(out), "--key-file", str(key))
    assert code == 0 and "200 ok" in " ".join(stdout.split())
    # the published flat folder loads with its labels from the manifest (lab run's folder datasets, lab audit)
    from lab.audit import label_folders
    from lab.data import folder_files
    classes, items = folder_files(out)
    assert classes == header["classes"] and len(items) == 200
    assert all(classes[i] == p.name.split("_")[0] for p, i in items)
    files, left_out = label_folders(out, "PUBLISHED")
    assert sorted(files) == classes and sum(map(len, files.values())) == 200 and left_out == 1  # manifest.jsonl
