import sys

from loader._internal.process import scrub_initial_environment
from loader.cli import main

# A command run in the loader's container (the health check, docker exec) holds the container's
# environment; gVisor shows it to a confined child of the same user: blank it as soon as we can.
scrub_initial_environment()
sys.exit(main())
