"""The rollout tool: move model versions through canary and stable without downtime.

`python -m infra.rollout status | canary <version> | promote | rollback [--stable]`.
It edits models.config through the ModelServerConfig protos, validates every change
before writing it, writes atomically, optionally pushes the config to TF Serving over
gRPC, and waits on the model server's REST status before taking the next step.
"""
