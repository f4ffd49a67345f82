# Kept for one release so code that still imports vermas.testing.standin_model works; use vermas.testing.standin.
from vermas.testing.standin import *  # noqa: F401,F403
from vermas.testing.standin import __all__, main  # noqa: F401
