import pytest

from gateway.config.units import Rate, parse_duration, parse_percent, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1m30s", 90),
        (2, 2.0),
        ("0.5s", 0.5),
        ("100us", 0.0001),
        ("1d", 86400),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "ms", "10 parsecs", "-1s", True, None, [1], "1s2"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64KiB", 65536),
        ("1MiB", 1 << 20),
        ("10MB", 10_000_000),
        (512, 512),
        ("512", 512),
        ("2GiB", 2 << 30),
        ("1.5KiB", 1536),
        ("8k", 8192),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "ten", "10XB", -1, True, 1.5])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [
        ("100/s", 100, 1),
        ("5000/h", 5000, 3600),
        ("10/30s", 10, 30),
        ("60/min", 60, 60),
        ("1/d", 1, 86400),
        ("2.5/s", 2.5, 1),
    ],
)
def test_rates(text: str, limit: float, period: float) -> None:
    assert parse_rate(text) == Rate(limit, period)


@pytest.mark.parametrize("bad", ["100", "0/s", "/s", "100/fortnight", 100, "10/0s"])
def test_bad_rates(bad: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(bad)


def test_percent() -> None:
    assert parse_percent("50%") == 0.5
    assert parse_percent(0.25) == 0.25
    with pytest.raises(ValueError):
        parse_percent("150%")
