"""A processing script that fails the way real ones do: on its input."""

raise ValueError("no rows with a label in /opt/ml/processing/input/data-source")
