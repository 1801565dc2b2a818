"""Exceptions that carry a message meant for the user (file, run, key and what was expected)."""


class CalibError(Exception):
    """A problem with the input, the configuration or the output location.

    The message names what is wrong and where; the command line prints it without a traceback.
    """


class ConfigError(CalibError):
    """Invalid or missing configuration value."""


class DataError(CalibError):
    """Raw data that does not have the expected layout or content."""


class OutputError(CalibError):
    """The output location cannot be used (e.g. results exist and overwrite is off)."""
