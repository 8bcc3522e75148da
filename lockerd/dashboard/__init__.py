"""The operators' live view: ``/dashboard`` (page and assets) and the ``/ws/status`` stream.

``hub`` streams the fleet view to websockets without ever slowing a bank actor; ``routes``
serves the page and the socket. May import ``actors.fleet``, ``domain`` and ``lockerd.http``.
"""
