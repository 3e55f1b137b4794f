"""The OpenAI gateway: one endpoint in front of every engine, routed by the request's `model`."""
