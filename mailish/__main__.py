"""``python -m mailish`` is the ``mailish`` command."""

import sys

from mailish.cli import main

sys.exit(main())
