"""calib-mpi test suite."""
