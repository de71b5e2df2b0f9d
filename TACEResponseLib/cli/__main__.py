# PYTHON_ARGCOMPLETE_OK
"""``python -m TACEResponseLib.cli``: the ``tace-response`` tool (how the Slicer module starts it)."""

import sys

from TACEResponseLib.cli import main

sys.exit(main())
