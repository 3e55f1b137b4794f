"""The offline vLLM bundle: build it where the network is, install it where it is not."""
