"""Names of the files that components hand to each other.

Every component reads and writes artifacts through these constants, so a
layout change happens in one place (the TFX habit of artifact-key constants).
"""

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

# --- Evaluation -----------------------------------------------------------
BLESSING_JSON = "blessing.json"

# --- Export: the serving package -----------------------------------------
SAVED_MODEL_VERSION_DIR = "1"
MODEL_TARBALL = "model.tar.gz"
SUCCESS_MARKER = "_SUCCESS"
