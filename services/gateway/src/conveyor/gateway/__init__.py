"""Gateway: accepts work over HTTP, stores big payloads, publishes events, answers 202 at once."""
