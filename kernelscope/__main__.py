"""``python -m kernelscope``."""

from kernelscope.cli.app import run

run()
