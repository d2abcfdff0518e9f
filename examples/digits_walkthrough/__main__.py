import sys
import tempfile
from pathlib import Path

from digits_walkthrough.build import build

if len(sys.argv) not in (2, 3):
    sys.exit("usage: python -m digits_walkthrough DIR [AUTHORITY_DIR]   (default: a fresh temporary folder)")
authority = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(tempfile.mkdtemp(prefix="authority-"))
build(Path(sys.argv[1]).resolve(), authority.resolve())
