"""A fake NVML library serving scenario files, so the exporter can be tested without a GPU."""
