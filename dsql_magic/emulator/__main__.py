"""``python -m dsql_magic.emulator``: the same as the ``dsql-emulator`` command (see `cli`)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
