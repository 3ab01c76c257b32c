"""The recognize function: preprocessing, the model-server client, the prediction log, HTTP."""
