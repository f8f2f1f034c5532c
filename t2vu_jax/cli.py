"""What every command line of the project shares: bad input is one `error:` line naming the field or
file, and exit status 2."""
import sys

USAGE_ERROR = 2


def error(message) -> int:
  """Print `message` as the command's one error line; returns the exit status to end with."""
  print(f"error: {message}", file=sys.stderr)
  return USAGE_ERROR


def usage_error(message):
  """Print `message` as the command's one error line and exit with status 2."""
  sys.exit(error(message))
