"""The `conveyor` command: run the pipeline, its parts, and talk to it."""
