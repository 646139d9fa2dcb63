"""The background writer (generate/writeback.py): order, bounded queue, overlap, errors handed back."""
from __future__ import annotations

import threading
import time

import pytest

from medsoft_aug.generate.writeback import BackgroundWriter


def test_jobs_run_in_order_on_one_other_thread():
    seen, main = [], threading.get_ident()
    with BackgroundWriter() as w:
        for i in range(20):
            w.submit(lambda i=i: seen.append((i, threading.get_ident())))
    assert [i for i, _ in seen] == list(range(20))
    assert len({t for _, t in seen}) == 1 and seen[0][1] != main
    assert w.done == 20


def test_inline_when_depth_0():
    seen, main = [], threading.get_ident()
    with BackgroundWriter(depth=0) as w:
        w.submit(lambda: seen.append(threading.get_ident()))
        assert seen == [main]                     # ran inside submit


def test_bounded_and_overlapping():
    """With depth 1 the submitter runs ahead by at most one queued job while one is being written."""
    gate, started = threading.Event(), threading.Event()

    def slow():
        started.set()
        gate.wait(5)

    with BackgroundWriter(depth=1) as w:
        w.submit(slow)
        started.wait(5)
        w.submit(lambda: None)                    # queued: returns at once (overlap)
        t = threading.Thread(target=w.submit, args=(lambda: None,))
        t.start()
        time.sleep(0.2)
        assert t.is_alive()                       # a third job waits: the queue is bounded
        gate.set()
        t.join(5)
    assert w.done == 3


def test_a_job_error_is_raised_in_the_submitter_and_stops_later_jobs():
    ran = []

    def bad():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as info:
        with BackgroundWriter() as w:
            w.submit(lambda: ran.append(1))
            w.submit(bad)
            for i in range(5):
                time.sleep(0.05)
                w.submit(lambda i=i: ran.append(i + 10))
    assert ran[0] == 1 and all(r < 10 for r in ran)     # nothing after the failed job ran
    assert info.value.errno == 28                        # the same exception object


def test_submitter_error_waits_for_queued_jobs():
    ran = []
    with pytest.raises(KeyError):
        with BackgroundWriter() as w:
            w.submit(lambda: (time.sleep(0.1), ran.append("a")))
            raise KeyError("model failed")
    assert ran == ["a"]                                   # the queued batch was still written
