"""Exit codes of ``engram-stream`` (docs/operations.md lists them).

The CLI returns them; the supervisor also writes the code of its run into
``<data-dir>/last-exit.json`` so that ``engram-stream stop`` can report how
the run ended.
"""

OK = 0            # done; for run: stopped after draining every queue
ERROR = 1         # failed (the message says why); for stop: the run ended badly
CONFIG = 2        # a setting or the data directory refuses this start
RUNNING = 3       # another instance holds the name or the data directory
BACKLOG = 4       # run stopped before the queues drained; the backlog was saved and is queued again at the next start
FORCED = 130      # stopped at once by a second SIGINT (what was queued is saved as with BACKLOG)
