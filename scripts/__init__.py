"""Developer scripts run from the repository root, such as ``python -m scripts.demo``."""
