"""Refusal texts the producer's calls share."""

# The refusal when a ring or the control block stayed locked past its deadline
# (shm.errors.LockTimeout): its holder is most likely a stopped producer.
BUSY = ("queues busy: a ring stayed locked past its deadline (a producer holding it may be stopped); "
        "retry shortly")
