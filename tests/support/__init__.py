"""Helpers shared by the tests: processes, ports, HTTP waits."""
