"""Pytest grading plugin (placeholder until the grading issue lands): registers the `points` marker."""


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n): points this graded test is worth")
