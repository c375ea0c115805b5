"""Training scripts and modules of sweet-hub (not installed with the package)."""
