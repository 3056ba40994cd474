"""`python -m exporter.cli …`: the console script `exporter`, without its installed entry point."""

import sys

from exporter.cli.main import main

sys.exit(main())
