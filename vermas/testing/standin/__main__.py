"""``python -m vermas.testing.standin --port N --script FILE``."""

import sys

from vermas.testing.standin import main

sys.exit(main())
