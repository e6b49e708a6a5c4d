"""Entry point: `python3 -m harness COMMAND --params JSON` -> one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from harness import commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m harness", description=__doc__)
    parser.add_argument("command", choices=sorted(commands.COMMANDS))
    parser.add_argument("--params", default="{}", help="the command's parameters as a JSON object")
    args = parser.parse_args(argv)
    try:
        params = json.loads(args.params)
        result = commands.COMMANDS[args.command](**params)
    except Exception as error:  # the host reports it; a traceback in JSON is evidence, not noise
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]}
        print(json.dumps(result))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
