"""Benchmarks: scripts that start the real services and print numbers."""
