"""Notifier stage: records the finished job and delivers its signed webhook exactly once."""
