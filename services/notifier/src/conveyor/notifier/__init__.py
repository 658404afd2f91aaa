"""Notifier stage: records the finished job and POSTs its signed webhook to the callback URL."""
