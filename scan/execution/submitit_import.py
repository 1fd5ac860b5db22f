"""submitit, imported without touching the process's logging.

On its first import submitit configures logging with ``logging.config.dictConfig``, which closes every handler
already installed (a library user's file handler, pytest's capture): measured, a run that first imported it
mid-scan broke the test session's logging. Here the first import skips that configuration
(``SUBMITIT_LOG_LEVEL=NOCONFIG``, submitit's own switch) and the variable is restored, so jobs submitted from this
process still log as submitit intends; its warnings reach stderr through logging's last resort.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

_SWITCH = "SUBMITIT_LOG_LEVEL"


def load() -> ModuleType:
    if "submitit" not in sys.modules:
        previous = os.environ.get(_SWITCH)
        os.environ[_SWITCH] = "NOCONFIG"
        try:
            import submitit  # noqa: F401
        finally:
            if previous is None:
                del os.environ[_SWITCH]
            else:
                os.environ[_SWITCH] = previous
    return sys.modules["submitit"]
