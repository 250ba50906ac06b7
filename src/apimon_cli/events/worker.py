"""The gateway's events process (``events.gateway.worker_main``): started and ended by ``apimon gateway serve``."""

import sys

from .gateway import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
