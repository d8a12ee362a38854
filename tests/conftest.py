import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_dtype_policy():
    """Tests that switch to a mixed policy must not leak it into other tests."""
    keras.config.set_dtype_policy('float32')
    yield
    keras.config.set_dtype_policy('float32')


@pytest.fixture
def mixed_policy():
    """Runs a test under the mixed_float16 policy (restored by _reset_dtype_policy)."""
    keras.config.set_dtype_policy('mixed_float16')
    yield
