"""Names of the artifacts that components hand to each other, and of the
files inside them.

The steps (``kic.runtime.steps``) and the plain modules they call write
the files inside an artifact by these names, and the pipelines and the local
runner find outputs by the keys, so a layout change happens in one place (the
TFX habit of artifact-key constants). The components' signatures spell the
output keys themselves (KFP takes a component's outputs from its parameter
names, which cannot be constants); tests/test_pipeline_spec.py checks that
each key is an output of its compiled component. The names of the tasks that
hold these outputs are in ``kic.pipeline_names``.
"""

# --- Output keys: the output names in the component signatures ----------
EXAMPLES_KEY = "examples"  # prepare
DATA_REPORT_KEY = "report"  # prepare
MODEL_KEY = "model"  # train
METRICS_KEY = "metrics"  # evaluate: scalar metrics
EVALUATION_KEY = "evaluation"  # evaluate: the whole evaluation as JSON
EVALUATION_REPORT_KEY = "report"  # evaluate
BLESSING_KEY = "blessing"  # evaluate: the gate's decision
BLESSED_KEY = "Output"  # evaluate's single return value: blessed or not
PACKAGE_KEY = "package"  # export
PREDICTIONS_KEY = "predictions"  # batch_predict

# --- Examples: the output of prepare -------------------------------------
# A prepared dataset is a directory holding TFRecord shards per split, the
# label map, a report, and DATASET_INFO, which is written last: a directory
# without it is an unfinished dataset and is refused by every reader.
DATASET_INFO = "dataset_info.json"
DATA_REPORT_JSON = "data_report.json"
DATA_REPORT_MARKDOWN = "data_report.md"
DATA_REPORT_HTML = "data_report.html"
SPLITS = ("train", "validation", "test")

# --- Label map (the reference algorithm's file name, kept for migration) --
LABEL_MAP = "class_label_to_prediction_index.json"
LABELS_TXT = "labels.txt"

# --- Model: the output of train ------------------------------------------
KERAS_MODEL = "model.keras"
MODEL_INFO = "model_info.json"
TRAINING_HISTORY = "history.json"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"  # beside the model output (kic.training.checkpoints); kic run: <output>/checkpoints
CHECKPOINT_PREFIX = "ckpt-"  # each checkpoint's folder in it; kic run empties only those, a user's files stay

# --- Evaluation -----------------------------------------------------------
BLESSING_JSON = "blessing.json"
EVALUATION_JSON = "evaluation.json"  # every metric, per-class rows, confusion matrix and curves

# --- Export: the serving package -----------------------------------------
SAVED_MODEL_VERSION_DIR = "1"
MODEL_TARBALL = "model.tar.gz"
SUCCESS_MARKER = "_SUCCESS"
LATEST_POINTER = "LATEST"  # beside versioned packages: the URI of the newest
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"  # inside the SavedModel directory
TFLITE_MODEL = "model.tflite"
TFLITE_PARITY_REPORT = "tflite_parity.json"
SERVING_PARITY_REPORT = "serving_parity.json"  # served raw files vs the evaluate path on prepared records
