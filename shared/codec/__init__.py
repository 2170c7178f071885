"""The codec around the models: bitstream container, frame coding, weights, adapter files."""
