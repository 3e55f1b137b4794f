"""Load generation, reports and A/B comparison of vLLM engines (`bench`, `compare`)."""
