"""The one exception type for mistakes a user can make (bad path, malformed line, unknown key).

The CLI prints its message and exits with status 2, without a traceback. Everything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the file, line or key at fault."""
