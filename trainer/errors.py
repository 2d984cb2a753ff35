"""How commands end other than well: user mistakes (one line, exit 2) and requested stops (exit 76)."""


class UserError(ValueError):
    """A mistake the user can fix (bad spec, missing data); the message is one line."""


class ProfileError(UserError):
    """A cluster profile's setting that the engine refuses (found by asking it): the launcher puts the
    profile file in front, as load_profile does for what it can check alone."""


class Checkpointed(BaseException):
    """An attempt stopped on request (a time limit ahead) after a mid-epoch checkpoint; not an error.

    BaseException, like KeyboardInterrupt: nothing on the way may swallow it. The message says where.
    """
