"""Performance measurements behind ``securefl bench``: one module per section, each
returning a JSON-ready dict (medians of repeats, CPU and wall time, machine load)."""
