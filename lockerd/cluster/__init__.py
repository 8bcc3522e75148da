"""More than one node (contract §7): several ``lockerd serve`` processes on one PostgreSQL.

PostgreSQL is the membership, ownership and fencing engine; nothing here is a home-made
consensus protocol:

* :mod:`lockerd.cluster.link` owns one named thread with one connection that holds this
  node's session-level advisory locks (its node lock and one lock per owned shard) and
  LISTENs for the little coordination traffic there is. The connection dies with the node, so
  its locks die with it.
* :mod:`lockerd.cluster.shards` hashes banks into a fixed number of shards and says which live
  node should own which shard (rendezvous hashing: few moves when nodes come and go).
* :mod:`lockerd.cluster.node` runs the node: joins, acquires and releases shards, starts and
  stops the bank actors of owned shards, subscribes to their MQTT topics, and keeps the
  ownership map that request forwarding uses.
* :mod:`lockerd.cluster.forwarding` serves requests for banks owned elsewhere by forwarding
  them to the owner's internal HTTP route.
* :mod:`lockerd.cluster.feed` hands events appended on other nodes to this node's stored-event
  listeners (the directory, read models); :mod:`lockerd.cluster.fleetsync` shares live fleet
  status, so dashboards on any node see every bank.

With SQLite none of this is started: one node owns every bank. docs/architecture.md ("More
than one node") describes the design and its failure cases.
"""
