"""The GPU cluster dashboard, one module per row.

``panels`` holds the helpers every row builds on, each row module (``cluster``, ``nodes``,
``users``, ``jobs``, ``health``, ``exporters``) the panels of one row, and ``document`` lays the
rows out and assembles the dashboard. ``grafana/build_dashboard.py`` writes the JSON files.
"""
