"""Kafka plumbing every service shares: clients, topics, the stage loop, lag, the embedded broker."""
