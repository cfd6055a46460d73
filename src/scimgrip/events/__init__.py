"""Directory events for the host application: transactional outbox, events API, signed webhooks (issue 7).

See ``docs/events.md``. ``outbox`` is pure (event construction and diffs) and is the only module storage
imports; ``signing`` implements Standard Webhooks; ``dispatcher`` sends webhooks in the background; ``api``
serves the events API; ``sdk`` holds the helpers a host application uses.
"""
