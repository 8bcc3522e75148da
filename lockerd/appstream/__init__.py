"""The app's live stream: ``/ws/app?token=`` (contract §4, docs/api-app.md).

May import ``lockerd.banks`` (the live read model), ``lockerd.http`` and ``lockerd.users``.
"""
