"""The errors of prep, in a module of their own so that every other module of prep can raise them."""


class DatasetError(ValueError):
    """A dataset that cannot be prepared or opened (bad input, missing or damaged files); the message
    is one line that says what to do."""


class TextError(DatasetError):
    """The input text itself cannot be prepared (empty, not UTF-8): prep ends the message with the
    command that prepares other text in its place."""
