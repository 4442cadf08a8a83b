import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data directory shared by the session; digits is prepared into it on first use."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))
