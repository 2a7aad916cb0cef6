"""The names of kic's pipelines and of their tasks.

A task's name is what the Kubeflow Pipelines and Vertex AI UIs show, and the
folder a local run (kfp.local) keeps that task's outputs in, under the output
keys of ``kic.artifacts``. Plain strings, so the local runner, submit and the
tests read them without importing KFP or building a pipeline; the pipelines
(``kic.pipelines``) give their tasks these names.
"""

TRAINING_PIPELINE_NAME = "image-classification-training"
TUNING_PIPELINE_NAME = "image-classification-tuning"

# The training pipeline's tasks; the tuning pipeline begins and ends with the same ones.
VALIDATE_TASK = "validate"
SNAPSHOT_TASK = "snapshot"
PREPARE_TASK = "prepare"
TRAIN_TASK = "train"
EVALUATE_TASK = "evaluate"
EXPORT_TASK = "export"
PREDICT_TASK = "batch-predict"

# The tuning pipeline's own tasks.
PLAN_TASK = "plan-trials"
SECOND_PLAN_TASK = "plan-second-wave"
TRIAL_TASK = "trial"
SELECT_TASK = "select-best"

# Vertex AI only: the step that computes train's CustomJob worker pools at run time
# (kic.pipelines.vertex_training), and the Model Registry upload (kic.pipelines.model_registry).
WORKER_POOLS_TASK = "train-worker-pools"
UPLOAD_TASK = "upload-model"
UPLOAD_VERSION_TASK = "upload-model-version"
