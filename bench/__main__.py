"""``make bench``: run the benchmarks, write bench/results/*.json.

``python -m bench [NAME ...]`` runs only the named ones (startup, kinds).
"""

import sys

from bench import kinds, startup

BENCHMARKS = {"startup": startup.main, "kinds": kinds.main}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(BENCHMARKS):
        BENCHMARKS[name]()
