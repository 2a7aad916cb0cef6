"""kic: Kubeflow Pipelines components for transfer learning of image classifiers."""

import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "kic" / "__init__.py").read_text()).group(1)

# The components and pipelines live at the repository root (the product's
# layout) and install as kic.components and kic.pipelines. Every package is
# found on disk, so a new one cannot be left out of the wheel.
PACKAGE_DIRS = {
    "kic": "kic",
    **{f"kic.{name}": f"kic/{name.replace('.', '/')}" for name in find_packages("kic")},
    "kic.components": "components",
    **{f"kic.components.{name}": f"components/{name}" for name in find_packages("components")},
    "kic.pipelines": "pipelines",
}

# Only to compile the Vertex AI target and to send runs to Vertex AI (`pip install kic[vertex]`).
VERTEX = [
    # ModelUploadOp, the Model Registry step of pipeline-vertex.yaml: exactly the version whose image tag
    # the committed YAML names.
    "google-cloud-pipeline-components==2.22.0",
    # Vertex AI's client: `kic submit --vertex` and `kic schedule --vertex` (PipelineJob and
    # PipelineJobSchedule over the REST transport); the range is GCPC's own.
    "google-cloud-aiplatform>=1.14,<2",
]

setup(
    name="kic",
    version=VERSION,
    description="Transfer learning of pretrained TensorFlow image backbones as Kubeflow Pipelines components",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"kic.components": ["*/component.yaml"]},
    install_requires=[
        "kfp>=2.17.3,<2.18",  # the committed YAML is compiled by this minor version
        "kfp-kubernetes>=2.17.3,<2.18",  # node selectors, tolerations, timeouts and secrets on Kubeflow Pipelines
        # Keras and TensorFlow: the releases kic.compat's private-API workarounds were checked on (it refuses others).
        "tensorflow>=2.21,<2.22",
        "keras>=3.15.1,<3.16",
        "tensorboard>=2.20",  # training curves; TensorFlow no longer pulls it in
        "tensorflow-datasets>=4.9.9",
        "google-cloud-storage>=2.18",
        "boto3>=1.28.57",  # s3:// (AWS, MinIO); from 1.28.57 it reads AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL itself
        "pillow>=11.0",  # image validation and normalisation in prepare
        "matplotlib>=3.9",  # plots of the evaluation and tuning reports
        "optuna>=4.0",  # the tuning strategies: random, Sobol (QMC), TPE and grid samplers
        "scipy>=1.11",  # Optuna's Sobol sequence; the tuning report's rank correlations
        "numpy>=1.26",
    ],
    extras_require={
        "vertex": VERTEX,
        "test": [
            *VERTEX,  # the freshness test compiles pipeline-vertex.yaml; submit's tests talk to loopback stand-ins
            "pytest>=8",
            "pytest-xdist>=3.6",  # the fast suite on every core (pyproject.toml's addopts)
            "ruff>=0.6",
            "import-linter>=2.15,<3",  # the import floors (pyproject.toml [tool.importlinter]), .ci/lint-imports
            "scikit-learn>=1.5",  # independent reference for the evaluation metrics
            "markdown-it-py>=3",  # tests read the Markdown reports as a CommonMark viewer does (tests/report_views.py)
            "gcp-storage-emulator>=2026.7.19",  # a real GCS JSON API on loopback for tests
            "moto[server]>=5.0",  # a real S3 API on loopback for tests (ThreadedMotoServer)
            "tensorflow-serving-api>=2.20,<2.22",  # parses the exported TF Serving warm-up file in tests
        ],
    },
    entry_points={"console_scripts": ["kic = kic.cli:main"]},
)
