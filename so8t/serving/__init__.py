"""Serving: generation (``so8t run``), ``so8t decide`` and ``so8t serve`` following the production alias."""
