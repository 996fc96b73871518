"""``python -m mergehub`` runs the CLI."""

import sys

from mergehub.cli.main import main

sys.exit(main())
