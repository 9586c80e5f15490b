"""The ``fastcnn`` command's entry point (``fastcnn.cli.main`` does the work).

It lives outside the package on purpose: importing ``fastcnn`` loads NumPy, SciPy and Numba,
which takes half a second, and a Ctrl-C in that half second would otherwise end in a traceback
through the imports. Here it ends as every other interruption of the command does: one line,
exit status 130.
"""

import signal
import sys


def main():
    # A Ctrl-C is noted as well as raised: one that lands in a C extension's import can come out as
    # another error, with nothing that links it to the Ctrl-C ("ImportError: numba._devicearray
    # failed to import", the KeyboardInterrupt printed and cleared by the extension).
    # One that lands in a callback Python runs meanwhile (a weak reference's, in importlib's module
    # locks) is printed as "Exception ignored in ..." with a traceback, and the import goes on:
    # not printed here, and the command ends as interrupted once the import is done.
    seen = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: _note_and_raise(seen))
    except ValueError:  # not the main thread: Ctrl-C is not delivered here
        previous = None
    unraisable = sys.unraisablehook
    sys.unraisablehook = lambda report: None if isinstance(report.exc_value, KeyboardInterrupt) else unraisable(report)
    try:
        from fastcnn.cli import main as run
    except BaseException as e:
        if not (seen or _interrupted(e)):
            raise
        print("fastcnn: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = unraisable
    if seen:
        print("fastcnn: interrupted", file=sys.stderr)
        return 130
    status = run()
    # The command has ended and said so: a Ctrl-C while Python shuts down would only turn that
    # status into a death by signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


def _note_and_raise(seen):
    seen.append(True)
    raise KeyboardInterrupt


def _interrupted(error):
    """Whether ``error`` is a Ctrl-C, or was raised because of one: Python 3.11 turns one that
    lands while a class is being made (``__set_name__``, during an import) into a RuntimeError."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
