"""The one exception type of :mod:`muonlab.data`."""


class DataError(ValueError):
    """Bad data input: the message is one sentence naming the input and what would be valid."""
