"""Issue 16 with several nodes: a point stored by any node reaches the metric streams of all.

The nodes relay the points they stored as NOTIFY payloads (lockerd/cluster/pointsync.py).
"""

from __future__ import annotations

from pathlib import Path

from lockerd.cluster.pointsync import decode_points, encode_batches
from lockerd.telemetry.points import MetricPoint
from tests.cluster.conftest import needs_postgres
from tests.cluster.test_nodes import balanced, node_settings
from tests.lockerd.telemetry.test_mqtt_bridge import agent_client, new_agent, new_tenant, post_point
from tests.lockerd.telemetry.test_stream import stream
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import lockerd


def test_payloads_stay_under_the_notify_limit_and_round_trip() -> None:
    points = [
        MetricPoint("t" * 36, "a" * 36, f"metric-{n}" * 8, n / 3, 1_700_000_000_000_000 + n)
        for n in range(500)
    ]
    payloads = encode_batches("node-a", points)
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    decoded = [point for p in payloads for point in decode_points(p)[1]]
    assert [(p.metric, p.value, p.ts_us) for p in decoded] == [
        (p.metric, p.value, p.ts_us) for p in points
    ]
    assert {decode_points(p)[0] for p in payloads} == {"node-a"}


@needs_postgres
async def test_a_point_stored_by_either_node_reaches_the_streams_of_both(
    mosquitto: MosquittoBroker, cluster_database: str, tmp_path: Path
) -> None:
    async with lockerd(node_settings(mosquitto, cluster_database, "node-a")) as a:
        tenant = await new_tenant(a)
        agent = await new_agent(a, tenant)
        # started after the tenant exists: a node loads tenants and agents at start-up
        async with lockerd(node_settings(mosquitto, cluster_database, "node-b")) as b:
            await balanced(a, b)
            async with stream(a, tenant) as on_a, stream(b, tenant) as on_b:
                for via, value in ((a, 1.0), (b, 2.0)):
                    response = await post_point(via, agent, {"metric": "m", "value": value})
                    assert response.status_code == 202
                    assert (await on_a.data())["value"] == value
                    assert (await on_b.data())["value"] == value
                # MQTT: the shared subscription hands the point to one node; both streams get it
                async with agent_client(mosquitto) as mqtt:
                    await mqtt.publish(agent.topic("m"), b'{"value": 3}')
                    assert (await on_a.data())["value"] == 3
                    assert (await on_b.data())["value"] == 3
                    await mqtt.publish(agent.topic("m"), b'{"value": 4}')
                    assert (await on_a.data())["value"] == 4
                    assert (await on_b.data())["value"] == 4
            for node in (a, b):
                cluster = node.context.cluster
                assert cluster is not None and cluster.point_sync is not None
                assert cluster.point_sync.dropped == 0
