"""Vertex AI only: the exported model into the Vertex AI Model Registry.

Google Cloud Pipeline Components' documented pattern: an importer makes the
package's SavedModel folder a ``google.UnmanagedContainerModel`` with a
TensorFlow prebuilt prediction container, and ModelUploadOp uploads it (in the
pipeline's project and region), as a new model or, given
``vertex_parent_model``, as a new version of that model (a second importer makes
the parent a ``google.VertexModel``, which is what ModelUploadOp takes). The
upload runs in Google's own image of those components; only compiling needs
them here, as the optional extra ``kic[vertex]``.
"""

from __future__ import annotations

from kfp import dsl

from kic.errors import MissingDependencyError
from kic.pipeline_names import UPLOAD_TASK, UPLOAD_VERSION_TASK

NO_COMPONENTS = ("the Vertex AI pipeline uploads models with Google Cloud Pipeline Components, which are not "
                 "installed: pip install kic[vertex] (or compile only the Kubeflow Pipelines target: --target kfp)")


def require_components() -> None:
    """Raises MissingDependencyError, naming the extra to install, without Google Cloud Pipeline Components."""
    try:
        import google_cloud_pipeline_components  # noqa: F401
    except ImportError:
        raise MissingDependencyError(NO_COMPONENTS) from None


def upload(exported, p) -> None:
    """Inside the pipeline, after ``exported`` (the export task): uploads its
    SavedModel when ``vertex_model_display_name`` names a model."""
    require_components()
    from google_cloud_pipeline_components import _placeholders
    from google_cloud_pipeline_components.types.artifact_types import UnmanagedContainerModel, VertexModel
    from google_cloud_pipeline_components.v1.model import ModelUploadOp

    with dsl.If(p["vertex_model_display_name"] != "", name="model-registry-requested"):
        saved_model = dsl.importer(
            artifact_uri=exported.outputs["saved_model_uri"], artifact_class=UnmanagedContainerModel,
            metadata={"containerSpec": {"imageUri": p["vertex_serving_image"]}},
        ).set_display_name("saved-model")
        model = dict(display_name=p["vertex_model_display_name"], description=exported.outputs["model_description"],
                     labels=exported.outputs["model_labels"], unmanaged_container_model=saved_model.output,
                     location=_placeholders.LOCATION_PLACEHOLDER)  # the pipeline's region; the project is its too

        # Each run uploads what it exported: never from the cache.
        with dsl.If(p["vertex_parent_model"] == "", name="new-model"):
            ModelUploadOp(**model).set_display_name(UPLOAD_TASK).set_caching_options(False)
        with dsl.Else(name="new-version"):
            # ModelUploadOp reads the parent's resource name from the artifact's metadata.
            parent = dsl.importer(artifact_uri=p["vertex_parent_model"], artifact_class=VertexModel,
                                  metadata={"resourceName": p["vertex_parent_model"]}).set_display_name("parent-model")
            ModelUploadOp(**model, parent_model=parent.output).set_display_name(
                UPLOAD_VERSION_TASK).set_caching_options(False)

