"""The errors a run reports as its outcome rather than as a crash of actlab itself."""


class ConfigError(ValueError):
    """A config value that cannot work, caught before any training starts."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: a result (status ``diverged``), not a bug."""
