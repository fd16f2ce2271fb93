"""Files the wheel carries are copies of the repository's canonical ones: keep them equal."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPIES = {
    "protos/inferd/v1/control.proto": "inferd/control/control.proto",
    "systemd/inferd.service": "inferd/data/inferd.service",
    "systemd/inferd.default": "inferd/data/inferd.default",
    "config/inferd.yaml": "inferd/data/inferd.yaml",
}


def test_bundled_copies_match_their_sources() -> None:
    stale = [copy for source, copy in COPIES.items() if (ROOT / source).read_bytes() != (ROOT / copy).read_bytes()]
    assert not stale, f"copy the canonical file over these: {stale}"
