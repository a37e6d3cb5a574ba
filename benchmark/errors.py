"""The one exception type users see: a one-line message saying what is wrong and what to do."""

__all__ = ["FusebenchError", "PluginError"]


class FusebenchError(Exception):
    """An error caused by input, configuration or environment, not by a bug.

    The CLI prints ``str(error)`` on one line and exits with status 2 (no traceback unless
    ``--debug``). Messages name the file, line or option at fault and the way out.
    """


class PluginError(FusebenchError):
    """A method's own code (its builder, optimizers, training step or forward) raised.

    The message names the method, the plugin and distribution that registered it, and the
    file:line that raised; the original exception is chained (``--debug`` shows its traceback).
    """
