"""User-facing errors: one line, names the problem, exits non-zero from the CLI."""


class DoublebindError(Exception):
    """An error caused by input or by a failed check, reported as one line."""


class ConfigError(DoublebindError):
    """A config is malformed: unknown key, wrong type, impossible value."""


class VerificationError(DoublebindError):
    """A built organism failed one of its verification checks."""
