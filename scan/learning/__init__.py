"""Models and their training: the Keras model, trials, callbacks, fused packs, records, model zips."""
