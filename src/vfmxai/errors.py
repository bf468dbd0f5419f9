"""The one exception type users see: the CLI prints its message on one line and exits 1."""


class VfmxaiError(Exception):
    """A user error (bad file, option, dataset, checkpoint). Its message is one line naming what is wrong."""
