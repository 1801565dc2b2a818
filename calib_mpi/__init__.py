"""calib-mpi: MPI-parallel calibration constants for the AGIPD X-ray detector."""

__version__ = "0.1.0"
