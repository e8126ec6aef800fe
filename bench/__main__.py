"""``make bench``: run the benchmarks, write bench/results/*.json."""

from bench import startup

if __name__ == "__main__":
    startup.main()
