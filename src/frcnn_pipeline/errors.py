"""The one base class of the errors a user can fix from the message alone (bad data, files, settings).

Every layer may import it. The project's `kedro run` shows such an error in a few lines and writes the full
traceback to a log file; any other exception keeps its full traceback on the terminal.
"""


class UserFacingError(Exception):
    """Its message names what is wrong, where (file, key, id) and the fix."""
