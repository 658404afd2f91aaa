"""Conveyor's shared library: settings, event schemas, Kafka delivery, stores and telemetry.

Every service imports from here, so delivery semantics, metrics and tracing live in one place.
"""
