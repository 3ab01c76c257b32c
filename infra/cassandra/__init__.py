"""The prediction-log schema and the tool that applies it."""
