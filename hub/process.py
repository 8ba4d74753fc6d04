"""What every metrics-hub daemon's main() shares: logging set-up and the exit-code rules."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from hub.errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log records at ``level`` and above to stderr, one line each."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, force=True, format=LOG_FORMAT)


def run_main(coro: Coroutine[Any, Any, int], prog: str) -> int:
    """Run a daemon's main coroutine and map how it ended to an exit code: its own code;
    2 for a ConfigError (one line on stderr); 0 for a SIGINT that came before the daemon's
    handlers were installed; 1 for anything else, logged with its traceback."""
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except Exception:
        logging.getLogger(prog).exception("%s failed", prog)
        return 1
