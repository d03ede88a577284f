"""The test suite's own machinery holds: what `make test` relies on to share costly fixtures."""

import pytest


@pytest.mark.xdist_group("test_suite")
def test_xdist_groups_take_effect_under_loadgroup(request):
    """`--dist loadgroup` sends a group's tests to one worker by tagging their node ids with the group; a pytest that
    keeps node ids where pytest-xdist cannot tag them (9.2 with xdist 3.8) ignores every group without a word, and
    each worker then builds the session fixtures a group was meant to share."""
    if not getattr(request.config.option, "loadgroup", False):  # set in the workers of `pytest -n N --dist loadgroup`
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@test_suite"), request.node.nodeid
