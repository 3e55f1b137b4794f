import sys

from orchestrator.gateway.server import main

sys.exit(main())
