"""Events: reading files, weights, the persisted split, metrics (pure), the training arrays."""
