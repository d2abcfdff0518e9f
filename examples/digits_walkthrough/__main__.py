import sys
from pathlib import Path

from digits_walkthrough.build import build

if len(sys.argv) != 2:
    sys.exit("usage: python -m digits_walkthrough DIR")
build(Path(sys.argv[1]).resolve())
