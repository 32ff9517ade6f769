import sys

import pytest

from ember.core.memory import release_freed_memory_eagerly


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_release_freed_memory_eagerly_takes_effect():
    assert release_freed_memory_eagerly() is True
