"""so8t: the SO8T library (data, SO(8) rotation gate, PET, QLoRA training, ...).

Never imports Prefect: every stage works from plain Python and from the ``so8t`` CLI.
"""

__version__ = "0.1.0"
