"""All engines of one host: placement applied, reload as a difference, durable state."""
