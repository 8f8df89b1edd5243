"""Exceptions of recsys. Every error a user can cause is one of these, with a one-line message
that names the file, line, field or id at fault; the CLI prints the message, never a traceback."""


class RecsysError(Exception):
    """Base class: an error caused by input, configuration or saved files, not by a bug."""


class DataError(RecsysError):
    """Bad or missing data: a file, a column, a value, a checksum."""


class ConfigError(RecsysError):
    """A bad configuration key or value (from YAML or a command-line override)."""


class ModelLoadError(RecsysError):
    """A saved model directory that is missing files, corrupt, or of an incompatible version."""


class NotFittedError(RecsysError):
    """A model asked for recommendations before it was trained or loaded."""


class UnknownIdError(RecsysError):
    """A user or item id that the model does not know."""


class InvalidRequestError(RecsysError):
    """A recommendation request that cannot be answered as asked: k out of range, an empty history, an
    unknown option value, more results asked for than items are left after filtering."""
