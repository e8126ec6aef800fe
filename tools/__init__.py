"""Developer tooling: the local stack launcher shared by `make run` and the tests."""
