"""actlab's Hydra sweeper (found by Hydra once actlab is installed)."""
