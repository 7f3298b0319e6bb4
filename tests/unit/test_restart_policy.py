"""Restart backoff and parking, on injected times (no processes)."""

from engine.supervisor.children import Child, RestartPolicy

POLICY = RestartPolicy(flap_restarts=4, flap_window=60.0, park_seconds=30.0, backoff_max=1.0)


def test_backoff_doubles_up_to_the_cap():
    child = Child(0, None)
    delays = []
    for t in (0.0, 1.0, 2.0):
        assert not POLICY.on_exit(child, t)
        delays.append(round(child.next_start - t, 3))
    assert delays == [0.1, 0.2, 0.4]
    exporter = Child(-1, None, kind="exporter")
    for t in range(10):
        POLICY.on_exit(exporter, float(t))
    assert exporter.next_start - 9.0 == 1.0  # capped, and the exporter is never parked
    assert exporter.parked_until == 0.0


def test_too_many_exits_in_the_window_park_a_worker_until_it_is_due_again():
    child = Child(0, None)
    assert [POLICY.on_exit(child, t) for t in (0.0, 1.0, 2.0, 3.0)] == [False, False, False, True]
    assert child.parked_until == 33.0
    assert not POLICY.due(child, 32.9)
    assert POLICY.due(child, 33.0)
    assert child.parked_until == 0.0 and not child.exits  # a fresh start after parking


def test_old_exits_leave_the_window():
    child = Child(0, None)
    for t in (0.0, 1.0, 2.0):
        POLICY.on_exit(child, t)
    assert not POLICY.on_exit(child, 100.0)  # the first three are older than 60 s
    assert len(child.exits) == 1 and round(child.next_start - 100.0, 3) == 0.1


def test_signal_queue_handlers_only_enqueue_and_wake_the_wait():
    import os
    import signal
    import time

    from engine.signals import SignalQueue
    q = SignalQueue()
    q.install((signal.SIGUSR1,))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        t0 = time.monotonic()
        q.wait(5.0)  # returns at once: the wake-up fd has a byte
        assert time.monotonic() - t0 < 2.0
        assert q.pop() == signal.SIGUSR1 and q.pop() is None
    finally:
        q.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
