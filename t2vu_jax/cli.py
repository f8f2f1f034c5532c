"""What every command line of the project shares: bad input is one `error:` line naming the field or
file, and exit status 2; `--config=FILE --config.x=y` flags (ml_collections) report their mistakes so."""
import sys

USAGE_ERROR = 2
_OVERRIDE_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


def error(message) -> int:
  """Print `message` as the command's one error line; returns the exit status to end with."""
  print(f"error: {message}", file=sys.stderr)
  return USAGE_ERROR


def usage_error(message):
  """Print `message` as the command's one error line and exit with status 2."""
  sys.exit(error(message))


def _bad_override(e: Exception, argv) -> None:
  """A `--config.x=y` that names no field or does not parse, as one line naming the flags given."""
  given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config")]
  usage_error(f"{', '.join(given) or '--config'}: {type(e).__name__}: {e}")


def define_config_flag(default: str | None, help: str) -> None:
  """`--config` (an ml_collections config file, overridable field by field). The overrides of the
  default file are applied as the flag is defined, from sys.argv, so their errors are caught here too."""
  from ml_collections import config_flags
  try:
    config_flags.DEFINE_config_file("config", default, help, lock_config=True)
  except _OVERRIDE_ERRORS as e:
    _bad_override(e, sys.argv)


def parse_flags(argv):
  """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`), bad flags as one line."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    usage_error(str(e))
  except _OVERRIDE_ERRORS as e:
    _bad_override(e, argv)


def loaded_config():
  """The parsed `--config`; a config file that did not load is one error line."""
  from absl import flags
  config = flags.FLAGS.config
  if config is None:
    usage_error("give --config=FILE")
  try:
    config.keys()  # a config file that failed to load raises on first use
  except OSError as e:
    usage_error(f"--config: cannot load the config file ({str(e).strip().splitlines()[-1].strip()})")
  return config
