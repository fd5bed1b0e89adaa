"""RPH, the Resource Process Holder: on-demand GPU servers behind HTTP."""

__version__ = "0.1.0"
