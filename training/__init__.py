"""Training: rate–distortion training of base codecs (:mod:`training.rd`) and data
loading (:mod:`training.data`). Uses :mod:`shared`; never the server or client."""
