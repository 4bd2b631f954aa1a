"""CPU mode's patches of verl (verl_patch.cpu.patches) against the pinned verl tree (repos/).

Each patch fingerprints the verl function it covers. These tests fail, naming the patch, when
the code under a patch changes, is gone, or the line it names moved: a verl upgrade cannot
turn a patch silently into a no-op. The check reads verl's source; nothing here imports verl.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hvt.config.run_paths import repos_dir
from verl_patch.cpu import patches


@pytest.fixture
def verl_tree(repos: Path) -> Path:
    root = repos_dir() / "verl" / "verl"
    assert root.is_dir(), f"{root} missing: `hvt repos` fetches the pinned verl"
    return root


@pytest.fixture
def copied_tree(verl_tree: Path, tmp_path: Path) -> Path:
    """Just the files the patches cover, copied so a test may edit them."""
    for patch in patches.PATCHES:
        dest = tmp_path / "verl" / patch.file
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(verl_tree / patch.file, dest)
    return tmp_path / "verl"


def test_every_patch_fits_the_pinned_verl(verl_tree: Path) -> None:
    assert patches.problems(verl_tree) == []
    assert patches.main(["--root", str(verl_tree)]) == 0


def test_each_patch_names_a_file_line_and_reason() -> None:
    names = [p.name for p in patches.PATCHES]
    assert len(set(names)) == len(names) and set(names) == set(patches.APPLY)
    for patch in patches.PATCHES:
        assert patch.line > 0 and patch.needle and patch.why and len(patch.fingerprint) == 16


@pytest.mark.parametrize("patch", patches.PATCHES, ids=lambda p: p.name)
def test_a_changed_function_is_named(copied_tree: Path, patch: patches.Patch) -> None:
    """Change one statement in the function under the patch: only that patch is reported."""
    path = copied_tree / patch.file
    text = path.read_text()
    name = patch.target.rsplit(".", 1)[-1]
    marker = f"def {name}(" if f"def {name}(" in text else f"class {name}"
    head, sep, tail = text.partition(marker)
    body_start = tail.index(":\n") + 2  # first line of the body
    indent = len(tail[body_start:]) - len(tail[body_start:].lstrip())
    edited = tail[:body_start] + " " * indent + "_hvt_upgrade_probe = 1\n" + tail[body_start:]
    path.write_text(head + sep + edited)
    found = patches.problems(copied_tree)
    assert len(found) == 1 and found[0].startswith(f"patch {patch.name}: {patch.target}"), found
    assert "changed" in found[0]


def test_a_function_gone_is_named(copied_tree: Path) -> None:
    patch = next(p for p in patches.PATCHES if p.name == "gloo-process-group")
    path = copied_tree / patch.file
    path.write_text(path.read_text().replace(f"def {patch.target}(", "def renamed_upstream("))
    assert patches.problems(copied_tree) == [
        f"patch gloo-process-group: {patch.target} is gone from verl/{patch.file}:{patch.line}"
    ]


def test_a_moved_line_is_named(copied_tree: Path) -> None:
    """The function is unchanged but moved: the file:line the patch documents is stale."""
    patch = next(p for p in patches.PATCHES if p.name == "offload-without-pinned-memory")
    path = copied_tree / patch.file
    path.write_text("# a new licence header line\n" + path.read_text())
    (found,) = patches.problems(copied_tree)
    assert found.startswith("patch offload-without-pinned-memory: verl/workers/engine/fsdp/")
    assert "no longer reads" in found


def test_apply_refuses_on_drift_before_touching_verl(
    copied_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch = next(p for p in patches.PATCHES if p.name == "critic-sdpa-attention")
    path = copied_tree / patch.file
    path.write_text(path.read_text().replace('"flash_attention_2"', '"flash_attention_3"'))
    monkeypatch.setattr(patches, "verl_root", lambda: copied_tree)
    with pytest.raises(patches.PatchDrift, match="patch critic-sdpa-attention"):
        patches.apply()  # would import verl next; the operator venv has no verl at all
