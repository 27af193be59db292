"""The uploader's token bucket on a virtual clock: every window of a second or more holds the rate,
whatever the pieces, pauses and rate changes; short windows stay near it."""

from __future__ import annotations

import bisect
import itertools
import random
import threading
from collections.abc import Callable

import pytest

from survey6.probe.uploader import MIN_PIECE_BYTES, PIECE_S, SHORTEST_WAIT_S, TokenBucket

RATE_BYTES_PER_S = 100_000.0


class VirtualTime(threading.Event):
    """A clock and a stop event whose waits move the clock instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 5000.0
        self.stop_after_s: float | None = None  # "set" the event once the clock passes this

    def clock(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None and timeout >= 0
        self.now += timeout
        return self.stop_after_s is not None and self.now >= self.stop_after_s


def releases(
    bucket: TokenBucket, time: VirtualTime, pieces: list[int], rate: Callable[[], float]
) -> list[tuple[float, int]]:
    """Takes every piece in turn; returns (release time, bytes) of each."""
    released = []
    for piece in pieces:
        assert bucket.take(piece, rate, time)
        released.append((time.now, piece))
    return released


def max_in_window(released: list[tuple[float, int]], window_s: float) -> int:
    """The most bytes released in any window of `window_s` (closed at both ends: the worst case)."""
    times = [at for at, _ in released]
    sums = list(itertools.accumulate((size for _, size in released), initial=0))
    return max(sums[bisect.bisect_right(times, at + window_s)] - sums[i] for i, at in enumerate(times))


def test_it_starts_empty_and_the_first_piece_waits() -> None:
    time = VirtualTime()
    bucket = TokenBucket(time.clock)
    assert bucket.take(10_000, lambda: RATE_BYTES_PER_S, time)
    # A second's budget less the piece, spread over the second (and the shortest wait's debt).
    assert time.now - 5000.0 == pytest.approx(10_000 / ((RATE_BYTES_PER_S - 10_000) / (1 + SHORTEST_WAIT_S)))


@pytest.mark.parametrize(
    ("seed", "rate", "piece"),
    [
        (1, RATE_BYTES_PER_S, int(RATE_BYTES_PER_S * PIECE_S)),
        (2, RATE_BYTES_PER_S, int(RATE_BYTES_PER_S * PIECE_S)),
        (3, RATE_BYTES_PER_S, int(RATE_BYTES_PER_S * PIECE_S)),
        (4, 2e9, 1 << 20),  # 1 MiB chunks at 2 GB/s: waits under SHORTEST_WAIT_S, run up as debt
    ],
)
def test_every_window_of_a_second_or_more_holds_the_rate(seed: int, rate: float, piece: int) -> None:
    choice = random.Random(seed)
    pieces = [choice.choice([piece, piece, piece // 3, MIN_PIECE_BYTES, 5 * piece]) for _ in range(6000)]
    time = VirtualTime()
    released = releases(TokenBucket(time.clock), time, pieces, lambda: rate)
    for window_s in (1.0, 1.5, 3.0):
        assert max_in_window(released, window_s) <= rate * window_s
    # All of it in about the time the rate allows (less the budget of the largest piece, a tenth
    # of a second's worth here): the bound does not come from going slowly.
    elapsed = released[-1][0] - 5000.0
    assert sum(pieces) / elapsed > 0.85 * rate


def test_a_pause_buys_no_burst() -> None:
    """A new file, a new stream or an idle hour: nothing is saved up but the piece being waited for."""
    time = VirtualTime()
    bucket = TokenBucket(time.clock)
    piece = int(RATE_BYTES_PER_S * PIECE_S)
    released = releases(bucket, time, [piece] * 100, lambda: RATE_BYTES_PER_S)
    time.now += 3600.0
    released += releases(bucket, time, [piece] * 100, lambda: RATE_BYTES_PER_S)
    assert max_in_window(released, 1.0) <= RATE_BYTES_PER_S
    assert max_in_window(released, 0.1) <= RATE_BYTES_PER_S * 0.1 + piece  # short windows stay near it


def test_a_lower_rate_applies_from_the_next_piece_and_within_a_long_wait() -> None:
    time = VirtualTime()
    bucket = TokenBucket(time.clock)
    rate = [RATE_BYTES_PER_S]
    piece = int(RATE_BYTES_PER_S * PIECE_S)
    fast = releases(bucket, time, [piece] * 200, lambda: rate[0])
    rate[0] = RATE_BYTES_PER_S / 10
    changed_at = time.now
    slow = releases(bucket, time, [piece] * 40, lambda: rate[0])
    assert max_in_window([r for r in fast + slow if r[0] > changed_at], 1.0) <= rate[0] + piece
    assert max_in_window(slow, 2.0) <= rate[0] * 2.0
    # A rate that falls while a piece waits counts from the next look at it (a quarter second).
    rates = iter([RATE_BYTES_PER_S] + [RATE_BYTES_PER_S / 100] * 1000)
    started = time.now
    assert bucket.take(50_000, lambda: next(rates), time)
    assert time.now - started > 50_000 / RATE_BYTES_PER_S


def test_no_rate_means_no_limit_and_stop_interrupts_a_wait() -> None:
    time = VirtualTime()
    bucket = TokenBucket(time.clock)
    assert bucket.take(10 << 20, lambda: 0.0, time)
    assert time.now == 5000.0
    time.stop_after_s = 5000.5
    assert not bucket.take(RATE_BYTES_PER_S, lambda: RATE_BYTES_PER_S, time)  # would need > 1 s
    assert time.now < 5001.0
