"""labkit: the shared library of the LLM Performance Lab."""

__version__ = "0.1.0"
