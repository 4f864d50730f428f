"""One exception type for bad user input.

Library code raises :class:`InputError` with a message that names the file, label value,
shape or version at fault. The CLI turns it into one ``Error: ...`` line and exit code 2,
with no traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a file, a label value, a shape, a version, an option."""
