"""``python -m collectors``: run the collector daemon (same as ``metrics-hub collector``)."""

import sys

from collectors.main import main

sys.exit(main())
