"""``python -m rnn_gpu.bench``: the same as ``rnn-gpu bench``."""
from __future__ import annotations

from .cli import main

raise SystemExit(main())
