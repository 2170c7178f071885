"""The ``icmh`` command-line workflow: encode, decode, info, train-codec, bench."""
