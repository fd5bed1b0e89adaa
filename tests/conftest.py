"""pytest setup: trio mode (pyproject), and the fixtures tests share."""

from collections.abc import Iterator

import pytest

from rph.net import lane


@pytest.fixture(params=["lane", "task"])
def answered_by(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test twice: plain requests answered by lanes, then every
    request answered by its connection's task (as when lanes are full)."""
    if request.param == "task":
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(lane, "LANE_THREADS", 0)
            yield request.param
    else:
        yield request.param
