"""Consumers that no message can stop: raw and task-level checks, dead letters, rejection events.

``make_celery`` installs the guard on every app (``install.py``); a role only says where its
rejections are recorded (``Guard.record_with``). See docs/protocol.md#rejected-messages.
"""
