"""The serving signatures: raw image bytes (or decoded pixels) in,
probabilities and labels out, with training's own decode and resize.

``serving_default`` takes a 1-D string tensor of encoded images (JPEG, PNG,
GIF, BMP, WebP) and decodes them (EXIF orientation applied) and resizes them
in the graph with ``kic.model.preprocessing`` (the path training used), so
serving cannot drift from training. ``pixels`` takes float32 RGB in [0, 255]
already at the model's input size; TFLite is converted from it.

``probabilities`` is [batch, num_classes], or in binary mode [batch, 1]: the
probability of the positive class (``kic.serving.contract``); the label and
top-k outputs rank both classes in either mode; ``labels`` repeats every class
label, in index order, for each image, as the reference's verbose response
carries them.

``preprocess`` (a saved function, not a signature) is the decode and resize
``serving_default`` runs, exposed so that export can measure what a served
model is given against what evaluation gave it (``kic.serving.parity``).
"""

from __future__ import annotations

import tensorflow as tf

from kic.model import loading, preprocessing
from kic.model.model_info import ModelInfo
from kic.serving.contract import INPUT_NAME, PIXELS_INPUT_NAME, PIXELS_SIGNATURE_NAME, SIGNATURE_NAME


class ServingModule(tf.Module):
    """The trained Keras model wrapped with decode, resize and label lookup."""

    def __init__(self, model, info: ModelInfo, top_k: int) -> None:
        super().__init__(name="kic_serving")
        self.model = model
        # Keras 3 variables reach the SavedModel only through the Keras objects;
        # without tracking the underlying tf.Variables here, TF Serving's loader
        # (and the TFLite converter) cannot find them although
        # tf.saved_model.load can.
        self.model_variables = [variable.value for variable in model.variables]
        self.image_size = info.image_size
        self.interpolation = info.interpolation
        self.short_side = info.image_short_side
        self.binary_mode = info.binary_mode
        self.top_k = min(top_k, info.num_classes)
        # A variable so that the loaded SavedModel still knows its labels.
        self.class_names = tf.Variable(list(info.class_names), dtype=tf.string, trainable=False,
                                       name="class_names")
        pixels_spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32,
                                    name=PIXELS_INPUT_NAME)
        self.serve_pixels = tf.function(self._pixels_outputs, input_signature=[pixels_spec])

    def signatures(self) -> dict:
        """For ``tf.saved_model.save``: every signature by its name."""
        return {SIGNATURE_NAME: self.serve, PIXELS_SIGNATURE_NAME: self.serve_pixels}

    def probabilities_from_pixels(self, pixels: tf.Tensor) -> tf.Tensor:
        return loading.logits_to_probabilities(self.model(pixels, training=False), self.binary_mode)

    def _pixels_outputs(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": self.probabilities_from_pixels(pixels)}

    def decode_one(self, encoded: tf.Tensor) -> tf.Tensor:
        return preprocessing.decode_and_resize(encoded, self.image_size, self.interpolation, self.short_side)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def preprocess(self, image_bytes: tf.Tensor) -> tf.Tensor:
        size = self.image_size
        return tf.map_fn(self.decode_one, image_bytes,
                         fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = self.preprocess(image_bytes)
        probabilities = self.probabilities_from_pixels(pixels)
        per_class = loading.class_scores(probabilities, self.binary_mode)
        scores, indices = tf.math.top_k(per_class, k=self.top_k)
        predicted_index = tf.argmax(per_class, axis=1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "predicted_index": predicted_index,
            "predicted_label": tf.gather(self.class_names, predicted_index),
            "top_k_scores": scores,
            "top_k_labels": tf.gather(self.class_names, indices),
            # Per image, not once: TF Serving and Vertex AI split every output along the batch.
            "labels": tf.tile(self.class_names[tf.newaxis], [tf.shape(probabilities)[0], 1]),
        }
