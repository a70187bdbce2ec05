"""What the command-line entry points share: a problem is one line `error: ...` on stderr and exit
status 1, flag errors included (absl would print a usage text or a traceback)."""
from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags

from flashworld_jax.io import request as request_lib


class ResolutionParser(flags.ArgumentParser):
  """--resolution=H,W as (H, W), each a positive multiple of the model's 32-pixel grid."""

  def parse(self, argument):
    try:
      height, width = (int(v) for v in argument.split(","))
    except ValueError:
      height = width = 0
    multiple = request_lib.SIZE_MULTIPLE
    if not (height > 0 and width > 0 and height % multiple == 0 and width % multiple == 0):
      raise ValueError(f"expected H,W: two positive multiples of {multiple}, e.g. 480,704")
    return height, width

  def flag_type(self):
    return "H,W"


def exit_with_error(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def flag_error_line(error: flags.Error) -> str:
  lines = str(error).splitlines()
  if len(lines) <= 1:
    return str(error)
  # ml_collections puts the config file's traceback in the message; the error it caught, first in
  # the exception chain, says what is wrong in one line (e.g. an unknown config variant).
  cause = error
  while cause.__context__ is not None:
    cause = cause.__context__
  return f"{lines[0]} {' '.join(str(cause).split())}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with each error as one line and exit status 1, like every other error."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    exit_with_error(flag_error_line(e))
