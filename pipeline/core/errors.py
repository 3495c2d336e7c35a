"""The one exception type a stage turns into a one-line message instead of a stack trace."""


class PipelineError(Exception):
    """A problem the user can fix: the message names the file or key and what to do."""
