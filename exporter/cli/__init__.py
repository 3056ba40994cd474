"""The `exporter` console script and its commands."""
