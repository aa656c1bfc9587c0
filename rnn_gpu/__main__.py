"""``python -m rnn_gpu``: the same as the ``rnn-gpu`` command."""
from __future__ import annotations

from .cli import main

raise SystemExit(main())
