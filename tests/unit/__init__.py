"""In-process unit tests: no child processes, no network; ``make check`` runs them in seconds."""
