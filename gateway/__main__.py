"""``python -m gateway``: run a gateway (same as ``metrics-hub gateway``)."""

import sys

from gateway.main import main

sys.exit(main())
