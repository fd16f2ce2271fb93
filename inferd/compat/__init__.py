"""Import shims for handler code written for the hosted platforms.

Workers put this directory on ``sys.path``, so ``from cortex_internal.lib.log import logger``
works unchanged in a handler.
"""

from pathlib import Path

SHIM_PATH = str(Path(__file__).parent)
