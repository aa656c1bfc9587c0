"""The version of rnn-gpu (also in pyproject.toml)."""
__version__ = "0.1.0"
