"""Collection names are the folder names under the service's root: exactly the documented pattern, nothing after."""

from __future__ import annotations

import pytest

from polymodal.errors import InvalidInput
from polymodal.serve.store import check_name


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "a" * 65, "-abc", "_abc", "a/b", "..", "", "ab c", "é"])
def test_names_outside_the_pattern_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="collection names"):
        check_name(name)


@pytest.mark.parametrize("name", ["a", "A-b_9", "a" * 64])
def test_names_in_the_pattern_pass(name: str) -> None:
    assert check_name(name) == name
