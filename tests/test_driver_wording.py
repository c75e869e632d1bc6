"""Edge cases of the drivers' wording that a tester found on tiny random models: a zero-width interval
is not called "no interval", and a refused drivers setting names the flag the user may have typed."""

from __future__ import annotations

import pytest

from tl_moe.errors import InputError
from tl_moe.pipeline.options import RunOptions
from tl_moe.pipeline.results.drivers_text import diagnostic


def test_a_zero_width_interval_is_named_as_such_not_as_missing():
    assert "zero width" in diagnostic(1.0, 1.0, 1.0, 0.0)
    assert diagnostic(0.5, float("nan"), float("nan"), 0.0) == "no interval"
    assert "the estimate at 0.50 of its interval" in diagnostic(0.5, 0.0, 1.0, 0.01)


@pytest.mark.parametrize(
    ("field", "flag"),
    [("tokens", "--drivers.tokens (--driver-tokens)"), ("count", "--drivers.count (--n-drivers)")],
)
def test_a_refused_drivers_setting_names_its_flag_and_its_alias(field, flag):
    with pytest.raises(InputError) as error:
        RunOptions(drivers={field: 0})
    assert str(error.value).startswith(f"{flag} must be a positive integer, got 0.")
