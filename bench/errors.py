"""The one exception type users see: a one-line message naming what is wrong and how to fix it."""


class BenchError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` on one line and exits with status 2."""


class ParadigmUnavailable(BenchError):
    """This paradigm cannot run on this data (e.g. no titles); the run skips it and completes the others."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run; the message says how to resume. The CLI exits with status 130."""
