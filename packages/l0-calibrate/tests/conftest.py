import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    # tests that start processes and wait on timeouts (seconds each): `-m "not slow"` skips them
    config.addinivalue_line("markers", "slow: takes more than a few seconds (processes, timeouts)")
