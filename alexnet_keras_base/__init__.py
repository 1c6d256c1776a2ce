"""The foundation of alexnet-keras, standard library only: what the commands need before
TensorFlow, and the library needs everywhere. The config and its presets (`config`), the
errors that end a command (`errors`), the folders on disk and the run's record (`layout`),
atomic file writes (`files`), the data-validation report (`validation_report`, also read in
TFDV's environment) and TensorFlow's quiet start-up (`quiet`).

It is a package of its own, under both `alexnet_keras` (the library) and `alexnet_keras_cli`
(the commands), because `import alexnet_keras` must register the custom layers, which imports
Keras: Keras 3 deserializes a custom layer only if its class is registered (it imports the
module named in a saved file only for its own packages), so a light `alexnet_keras/__init__`
would break `import alexnet_keras; keras.models.load_model(...)`.
"""
