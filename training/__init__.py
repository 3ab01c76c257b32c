"""Training: MNIST loading, the two model definitions, evaluation, and SavedModel export."""
