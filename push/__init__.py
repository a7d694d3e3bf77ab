"""Push-notification candidates: Aisle decides who to message, why, with what and until
when; the push system delivers. See ``docs/push.md``.

``rules.py`` is the pure part (priority, consent, caps, dedupe, quiet hours),
``candidate.py`` the published document, ``drain.py`` the worker loop that claims due
triggers, decides them and records every decision on the event log.
"""
