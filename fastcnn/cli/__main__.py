"""``python -m fastcnn.cli``: the ``fastcnn`` command."""

import sys

from . import main

sys.exit(main())
