"""Errors a user can cause. The CLI prints their message (one sentence that
names the problem and the fix) without a traceback and exits with code 2.
Bugs stay asserts."""


class Splat3dError(Exception):
    """A problem with the user's input: a file, an option, a config."""
