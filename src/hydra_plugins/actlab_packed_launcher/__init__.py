"""actlab's `packed` Hydra launcher (found by Hydra once actlab is installed)."""
