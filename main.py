"""Alcor-py: `python main.py` starts the dev run (see README); `python main.py --help` for roles."""

from alcor.cli import run

if __name__ == "__main__":
    run()
