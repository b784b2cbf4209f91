"""The log callback every library function takes: one line of progress, shown by the caller."""

from collections.abc import Callable

Log = Callable[[str], None]
