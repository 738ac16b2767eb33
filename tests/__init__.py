"""The test suite: `make test` runs every tier, `make test-fast` the unit tier (pytest markers in pytest.ini)."""
