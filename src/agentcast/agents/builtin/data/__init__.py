"""The demo's bundled sample data (``usage.csv``) and its generator (``generate.py``)."""
