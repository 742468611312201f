"""Shared test paths: ../shared beside the checkout (the CamVid data and the official key lists)."""
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
OFFICIAL_KEYS = SHARED / "reference" / "official_keys"
CAMVID = SHARED / "data" / "camvid"
