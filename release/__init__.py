"""The release layer: what a release does, in plain Python (never Prefect).

Planning a run and the file layout of a version (:mod:`release.layout`), the parameters of every recipe
(:mod:`release.params`), registry lookups and idempotent publishing (:mod:`release.versions`), the A/B
step (:mod:`release.ab`), the held-out evaluation (:mod:`release.evaluation`), the promotion gate and its
evidence (:mod:`release.gate`), the post-promotion smoke test (:mod:`release.smoke`), and the demo's
recipe, command line and report (:mod:`release.demo`; ``python -m flows.demo`` runs it).

Layers: ``so8t`` and ``registry`` below, ``tasks`` (one call each plus retries, cache policy and
artifacts) and ``flows`` above; ``tests/unit/test_layers.py`` checks that this package never imports
Prefect, tasks or flows.
"""

from pathlib import Path

#: The bundled data (data/README.md): the recipes' default training, validation and held-out files.
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
