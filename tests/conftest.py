import sys
from pathlib import Path

import pytest

# tests/ holds shared helpers (onnx_models.py) imported by several test files.
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def examples():
    return EXAMPLES
