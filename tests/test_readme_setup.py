"""What the README's set-up section promises, checked from the outside:

- every entry point (`polymodal` script, `python -m polymodal`, `torchrun -m polymodal`) has
  ``OMP_WAIT_POLICY=PASSIVE`` in the environment when torch loads (OpenMP reads it then, once);
- `make test` installs Debian's Chromium + chromedriver when they are missing (apt-get, with sudo when not
  root) and leaves them alone when present; `.ci/run` is just `make test`;
- the package metadata builds without setuptools' license deprecation warnings;
- the tour's output folders are ignored by git."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Imported by Python at start-up (PYTHONPATH): records, when `torch` is first imported, the OMP_WAIT_POLICY the
# process has then and whether polymodal is being imported (the torchrun launcher imports torch itself, before
# any polymodal; only the worker's record counts there). Inside polymodal that moment is all the test needs,
# so the process ends there (exit 0) instead of paying seconds for loading torch.
HOOK = textwrap.dedent("""
    import os, sys

    class _TorchImportProbe:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                sys.meta_path.remove(self)
                ours = "polymodal" in sys.modules
                with open(os.environ["PM_TORCH_PROBE"], "a") as f:
                    f.write(f"{os.environ.get('OMP_WAIT_POLICY')}\\t{ours}\\n")
                if ours:
                    os._exit(0)
            return None

    sys.meta_path.insert(0, _TorchImportProbe())
""")


def _torch_import_records(tmp_path: Path, argv: list[str], pythonpath: tuple[Path, ...] = (),
                          policy: str | None = None) -> list[tuple[str, bool]]:
    """Run ``argv`` with the probe; one ``(OMP_WAIT_POLICY at torch import, polymodal importing)`` per process.
    ``policy``: the value the environment starts with (None: unset)."""
    (tmp_path / "hook").mkdir(parents=True)
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
    log = tmp_path / "probe.log"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [tmp_path / "hook", *pythonpath])
    env["PM_TORCH_PROBE"] = str(log)
    proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("\t") for line in log.read_text(encoding="utf-8").splitlines()]
    return [(value, flag == "True") for value, flag in rows]


ENTRY_POINTS = {
    "script": [str(BIN / "polymodal"), "--version"],
    "python -m": [sys.executable, "-m", "polymodal", "--version"],
    "torchrun -m": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "1", "-m", "polymodal", "--version"],
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_loads_torch_with_passive_omp_threads(tmp_path, entry):
    argv = ENTRY_POINTS[entry]
    # `make` installs all three into .venv: a missing one is a broken set-up, not a reason to skip
    assert Path(argv[0]).exists(), f"{argv[0]} is not installed (run make)"
    records = _torch_import_records(tmp_path, argv)
    ours = [value for value, in_polymodal in records if in_polymodal]
    assert ours, f"torch was imported before polymodal: {records}"
    assert ours == ["PASSIVE"], records


def test_the_probe_catches_a_missing_policy_and_a_set_one_is_kept(tmp_path):
    """The probe on a copy of the package whose __init__ skips configure_threads: torch loads with no policy
    (so the test above fails without it). And a policy the user set is kept."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "polymodal", src / "polymodal", ignore=shutil.ignore_patterns("__pycache__"))
    init = src / "polymodal" / "__init__.py"
    text = init.read_text(encoding="utf-8")
    assert "\n_configure_threads()" in text
    init.write_text(text.replace("\n_configure_threads()", "\npass"), encoding="utf-8")
    argv = [sys.executable, "-m", "polymodal", "--version"]
    assert _torch_import_records(tmp_path / "without", argv, (src,)) == [("None", True)]
    assert _torch_import_records(tmp_path / "kept", argv, policy="ACTIVE") == [("ACTIVE", True)]


# ------------------------------------------------------------------------------------ make test: the browser

def _stub(folder: Path, name: str, body: str = "") -> None:
    """An executable ``folder/name`` that logs its arguments to $STUB_LOG, then runs ``body`` (shell builtins
    only: PATH holds nothing but stubs)."""
    (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$STUB_LOG"\n{body}', encoding="utf-8")
    (folder / name).chmod(0o755)


def make_browser(tmp_path: Path, *, uid: int, present: bool, apt: bool = True,
                 makefile: Path = ROOT / "Makefile") -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`make browser` with a PATH of stubs only: `id -u` says ``uid``, `sudo` runs its arguments, `apt-get`
    logs and (install) creates chromium + chromedriver; ``present``: they exist from the start."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n", encoding="utf-8")
    (bin_dir / "id").chmod(0o755)
    _stub(bin_dir, "sudo", 'exec "$@"\n')
    os.symlink(shutil.which("env") or "/usr/bin/env", bin_dir / "env")
    if apt:  # install: log the frontend it got, and "install" the two programs (empty stubs that log nothing)
        fake = "".join(f"printf '#!/bin/sh\\n' > {bin_dir / b}; /bin/chmod +x {bin_dir / b}; "
                       for b in ("chromium", "chromedriver"))
        _stub(bin_dir, "apt-get", f'if [ "$1" = install ]; then echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> '
                                  f'"$STUB_LOG"; {fake}fi\n')
    for b in ("chromium", "chromedriver") if present else ():
        (bin_dir / b).write_text("#!/bin/sh\n", encoding="utf-8")
        (bin_dir / b).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    make = shutil.which("make")
    assert make is not None
    env = {"PATH": str(bin_dir), "STUB_LOG": str(log), "HOME": str(tmp_path)}
    proc = subprocess.run([make, "-f", str(makefile), "browser"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    return proc, log.read_text(encoding="utf-8").splitlines()


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


@needs_make
@pytest.mark.parametrize("uid, sudo", [(1000, "sudo "), (0, "")])
def test_make_test_installs_debian_chromium_when_missing(tmp_path, uid, sudo):
    proc, calls = make_browser(tmp_path, uid=uid, present=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    apt = [c for c in calls if not c.startswith("DEBIAN_FRONTEND")]
    if sudo:
        assert [c for c in apt if c.startswith("sudo ")] == [
            "sudo apt-get update -q",
            "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium "
            "chromium-driver"]
    else:
        assert not any(c.startswith("sudo") for c in calls)
    assert [c for c in apt if c.startswith("apt-get")] == [
        "apt-get update -q", "apt-get install -y -q --no-install-recommends chromium chromium-driver"]
    assert "DEBIAN_FRONTEND=noninteractive" in calls  # reached apt-get through sudo too
    assert (tmp_path / "bin" / "chromedriver").exists()


@needs_make
def test_make_test_leaves_an_installed_browser_alone_and_says_what_is_missing_without_apt(tmp_path):
    for sub in ("present", "no_apt"):
        (tmp_path / sub).mkdir()
    proc, calls = make_browser(tmp_path / "present", uid=1000, present=True)
    assert proc.returncode == 0 and calls == [], proc.stdout + proc.stderr
    proc, calls = make_browser(tmp_path / "no_apt", uid=1000, present=False, apt=False)
    assert proc.returncode != 0 and calls == []
    assert "chromium" in proc.stderr and "apt-get install chromium chromium-driver" in proc.stderr


def test_ci_run_is_make_test():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "exec make test"
    assert "apt-get" not in "\n".join(commands)  # the browser set-up lives in the Makefile, for everyone
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "unit: $(STAMP) browser" in makefile


# ------------------------------------------------------------------------------------ packaging, git

def test_package_metadata_builds_without_setuptools_warnings(tmp_path):
    """What `pip install -e .` runs first (the PEP 660 metadata hook), on a copy of pyproject.toml: no
    deprecation warning (the license is an SPDX string, PEP 639), and the build backend's floor supports it."""
    pytest.importorskip("setuptools")
    project = tmp_path / "project"
    (project / "src" / "polymodal").mkdir(parents=True)
    (project / "src" / "polymodal" / "__init__.py").touch()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    out = tmp_path / "meta"
    out.mkdir()
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.prepare_metadata_for_build_editable(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code, str(out)], cwd=project, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr and "license" not in proc.stderr.lower(), proc.stderr[-3000:]
    (info,) = out.glob("*.dist-info")
    assert "License-Expression: Apache-2.0" in (info / "METADATA").read_text(encoding="utf-8")
    floor = re.search(r'^requires = \["setuptools>=(\d+)', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert floor is not None and int(floor.group(1)) >= 77  # the first setuptools that takes the SPDX string


def test_the_tours_output_folders_are_ignored_and_hold_no_source():
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert {"/data/", "/col/", "/runs/", "/quickstart/"} <= set(ignored)
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        tracked = subprocess.run([git, "ls-files", "data", "col", "runs"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=60).stdout
        assert tracked == ""
