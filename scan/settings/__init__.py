"""What the user writes: the hyperparameter and metric registries, the configuration, expressions."""
