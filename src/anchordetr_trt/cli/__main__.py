"""``python -m anchordetr_trt.cli``: the ``anchordetr-trt`` command line."""

import sys

from . import main

sys.exit(main())
