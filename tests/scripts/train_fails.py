"""A training script that fails the way real ones do: on its data."""

raise ValueError("label column 'churned' not found in the train channel")
