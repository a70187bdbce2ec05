"""Validates generation requests without running a model.

  python -m flashworld_jax.io.check_request FILE_OR_DIR [...]

Prints one line per request (views, H×W, image, prompt), or `error: <file>: <message>`, and
`warning: <file>: <message>` for what a request gets away with (unknown keys); a folder stands for
its *.json files. Exits with status 1 if any request is invalid; warnings alone do not fail.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app

from flashworld_jax.io import request as request_lib

_PROMPT_CHARS = 60


def request_files(paths: Sequence[str]) -> list[tuple[str, str | None]]:
  """(file, problem) pairs: every *.json of a folder, files as given; problem is None when readable."""
  found: list[tuple[str, str | None]] = []
  for path in paths:
    if os.path.isdir(path):
      names = sorted(n for n in os.listdir(path) if n.endswith(".json"))
      if not names:
        found.append((path, "folder holds no *.json request"))
      found.extend((os.path.join(path, n), None) for n in names)
    elif os.path.isfile(path):
      found.append((path, None))
    else:
      found.append((path, "no such file or folder"))
  return found


def summary(req: request_lib.SceneRequest) -> str:
  prompt = req.text_prompt if len(req.text_prompt) <= _PROMPT_CHARS else (
      req.text_prompt[:_PROMPT_CHARS - 1] + "…")
  image = (f"image {req.image.shape[0]}×{req.image.shape[1]} for view {req.image_index}"
           if req.image is not None else "no image")
  return (f"{req.num_views} views, H×W {req.height}×{req.width}, {len(req.cameras)} cameras, {image}, "
          f"prompt {prompt!r}")


def check(path: str) -> bool:
  """Prints the request's summary, warnings or error; True when it is valid."""
  try:
    req = request_lib.load_request(path)
  except request_lib.RequestError as e:  # its message starts with the file
    print(f"error: {e}", file=sys.stderr)
    return False
  except Exception as e:  # a bug or an OS error must still read as one line, not a traceback
    print(f"error: {path}: {type(e).__name__}: {e}", file=sys.stderr)
    return False
  for warning in req.warnings:
    print(f"warning: {path}: {warning}", file=sys.stderr)
  print(f"ok: {path}: {summary(req)}")
  return True


def main(argv: Sequence[str]) -> int:
  if len(argv) < 2:
    raise app.UsageError("give at least one request file or folder")
  failures = 0
  for path, problem in request_files(argv[1:]):
    if problem is None:
      valid = check(path)
    else:
      print(f"error: {path}: {problem}", file=sys.stderr)
      valid = False
    failures += not valid
  return 1 if failures else 0


if __name__ == "__main__":
  app.run(main)
