"""Make this folder's helper modules (reference.py, official_convnext.py) importable under importlib mode."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
