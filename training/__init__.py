"""Training: rate–distortion training of base codecs (:mod:`training.rd`), task-adapter
training (:mod:`training.adapters`) with task feature distortions
(:mod:`training.distortion`), and data loading (:mod:`training.data`). Uses
:mod:`shared`; never the server or client."""
