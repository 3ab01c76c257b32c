"""Infrastructure: Cassandra schema, deployment and rollout tools."""
