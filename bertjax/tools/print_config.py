"""Prints the resolved config as JSON: `bertjax print-config --config=configs/x.py --config.a=b`.

Shows what a run would use after every override, without starting it.
"""
import json

from bertjax import cli


def define_flags() -> None:
    """Called by the command only (see cli.run)."""
    cli.define_config()


def main(argv):
    del argv
    print(json.dumps(cli.config_to_dict(cli.get_config()), indent=2, sort_keys=True))


if __name__ == "__main__":
    cli.run(main, define_flags)
