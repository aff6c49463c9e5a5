"""Where things are, for every test: the repository, the shipped fixtures, the shared eval data."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = ROOT.parent / "shared"  # the eval corpus beside the checkout (benchmarks only; may be absent)
