"""``python -m anchordetr_trt``: the ``anchordetr-trt`` command line."""

import sys

from .cli import main

sys.exit(main())
