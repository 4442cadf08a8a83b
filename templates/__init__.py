"""The TF/Keras-compatible task layer: models, job templates, datasets."""
