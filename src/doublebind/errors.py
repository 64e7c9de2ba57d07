"""User-facing errors: one line, names the problem, exits non-zero from the CLI."""


class DoublebindError(Exception):
    """An error caused by input or by a failed check, reported as one line."""


class ConfigError(DoublebindError):
    """A config is malformed: unknown key, wrong type, impossible value."""


class VerificationError(DoublebindError):
    """A built organism failed one of its verification checks."""


def first_line(e: BaseException, default: str | None = None) -> str:
    """The first non-blank line of a library's (often long) error message; `default`, or the
    exception's type name, when it has none."""
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()),
                type(e).__name__ if default is None else default)


def read_text_file(path, what: str = "file") -> str:
    """The text of `path` as UTF-8, or one `DoublebindError` line naming the file (missing,
    a folder, unreadable, not UTF-8 text)."""
    import stat
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise DoublebindError(f"{what} {path} is a folder, not a file")
    try:
        mode = path.stat().st_mode
    except OSError:
        raise DoublebindError(f"{what} not found: {path}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # a pipe is read (`<(...)`, a piped /dev/stdin)
        raise DoublebindError(f"{what} {path} is not a regular file")  # /dev/null, a terminal, a socket
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DoublebindError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DoublebindError(f"{path}: not UTF-8 text (byte {e.start}); is it a binary file?") from None
