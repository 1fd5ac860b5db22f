"""hhscan: hyperparameter scans of Keras classifiers on ROOT/HDF5 ntuples, locally or on Slurm."""

__version__ = "0.1.0"
