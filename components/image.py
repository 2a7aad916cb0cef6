"""The one container image every component runs in, tagged with the package version.

Override at compile time with ``kic compile --image REF`` (or the ``KIC_IMAGE``
environment variable, read when the components are first imported).
"""

import os

import kic

IMAGE_REPOSITORY = "ghcr.io/kic-project/kic"
IMAGE = os.environ.get("KIC_IMAGE") or f"{IMAGE_REPOSITORY}:{kic.__version__}"
