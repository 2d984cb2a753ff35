"""User mistakes: printed as one line (no traceback) with exit code 2 by every command."""


class UserError(ValueError):
    """A mistake the user can fix (bad spec, missing data); the message is one line."""
