"""``python -m omnisync_model.cli`` runs the ``omnisync`` command."""

import sys

from .main import main

sys.exit(main())
