"""The one error of prep, in a module of its own so that every other module of prep can raise it."""


class DatasetError(ValueError):
    """A dataset that cannot be prepared or opened (bad input, missing or damaged files); the message
    is one line that says what to do."""
