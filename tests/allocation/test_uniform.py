import pytest

from pruning.allocation.uniform import MAX_SEARCH_RATIO, search_ratio
from pruning.errors import GraphTraceError


def test_search_ratio_finds_the_smallest_ratio_that_reaches_the_target():
    # MACs fall like (1 - r)^2 with a channel ratio r (inputs and outputs of a layer both shrink)
    ratio = search_ratio(lambda r: int(1e6 * (1 - r) ** 2), 10**6, 4.0)
    assert 0.5 <= ratio < 0.5 + MAX_SEARCH_RATIO / 2**11


def test_search_ratio_treats_an_emptied_layer_as_too_far_and_names_the_target_when_out_of_reach():
    def macs_at(r: float) -> int:
        if r > 0.6:
            raise GraphTraceError("a layer would lose every channel")
        return int(1e6 * (1 - r))

    assert search_ratio(macs_at, 10**6, 2.0) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(GraphTraceError, match=r"3.0 is out of reach \(at most 2.\d\dx") as exc:
        search_ratio(macs_at, 10**6, 3.0)
    assert exc.value.field == "target_macs_reduction"
