"""Running trials: the scan directory, leases, the runner, Slurm through submitit, sessions."""
