"""``make bench``: run the benchmarks, write bench/results/*.json.

``python -m bench [NAME ...]`` runs only the named ones (startup, kinds, events).
"""

import sys

from bench import events, kinds, startup

BENCHMARKS = {"startup": startup.main, "kinds": kinds.main, "events": events.main}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(BENCHMARKS):
        BENCHMARKS[name]()
