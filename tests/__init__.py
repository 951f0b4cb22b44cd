"""Test suite of gpu-cluster-monitor."""
