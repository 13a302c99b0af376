"""The errors a run reports as its outcome rather than as a crash of actlab itself."""


class UserError(Exception):
    """A mistake the user can fix (a config value, missing or damaged data, a directory
    that belongs to another run): one line on screen, the traceback only in the record."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work, caught before any training starts."""


class RunDirectoryError(ConfigError):
    """A run directory that belongs to another run (a live one, or finished results a fresh
    start would overwrite). Nothing is written into it: its record stays the other run's."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: a result (status ``diverged``), not a bug."""


class RunNotCompleted(Exception):
    """What a sweep's launcher reports for a job its record says did not complete: the
    record's status and error, e.g. ``interrupted: stopped by SIGTERM; ...``."""
