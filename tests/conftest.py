import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s; still runs in CI")
