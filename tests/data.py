"""Values that tests and their fixtures share (tests import these, never conftest itself)."""

S3_TEST_CREDENTIALS = {"access_key": "testing-key", "secret_key": "testing-secret"}
# The files of the `catalogue` fixture's versions.
WEIGHTS = {"model.pt": b"\x00\x01weights" * 512, "sub/config.yaml": b"sample_rate: 24000\n"}
