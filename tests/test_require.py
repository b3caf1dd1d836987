"""`polymodal.errors.require`: an optional dependency that is missing, or installed but broken, is one line that
says which and how to install it."""

from __future__ import annotations

import sys

import pytest

from polymodal.errors import MissingExtra, require


def test_a_missing_package_is_named_with_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "polymodal_no_such_pkg", None)
    with pytest.raises(MissingExtra, match=r"'polymodal_no_such_pkg' is not installed; install it with: pip "
                                           r"install 'polymodal\[ray\]'"):
        require("polymodal_no_such_pkg", "ray")


@pytest.mark.parametrize("error", ["ModuleNotFoundError(\"No module named 'torchvision'\", name='torchvision')",
                                   "RuntimeError('operator torchvision::nms does not exist')"])
def test_an_installed_package_that_fails_to_import_says_why(tmp_path, monkeypatch, error):
    """Like open_clip without a working torchvision: installed, but its own import fails (also with the
    RuntimeError a torchvision built for another torch raises)."""
    pkg = tmp_path / "polymodal_broken_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"raise {error}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtra) as exc:
        require("polymodal_broken_pkg", "openclip")
    text = str(exc.value)
    assert "is installed but cannot be imported" in text and "torchvision" in text
    assert "pip install 'polymodal[openclip]'" in text and "\n" not in text
