"""/metrics: what it counts, from the live fleet and the registry, and who may read it."""

from __future__ import annotations

import base64

from prometheus_client.parser import text_string_to_metric_families

from integration.web.webenv import ADMIN, VIEWER, WebEnv
from survey6.server.web import WebSettings
from survey6.wire.v1 import control_pb2


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def basic(user: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()}


def test_metrics_count_probes_heartbeats_and_landed_files(web_env: WebEnv) -> None:
    online = web_env.enrol()
    suspended = web_env.enrol()
    web_env.enrol()  # never heard from: offline
    for _ in range(3):
        web_env.heartbeat(online)
    web_env.heartbeat(suspended, state=control_pb2.CAPTURE_STATE_SUSPENDED)
    web_env.land(online, 1, size=1000, state="ingested")
    web_env.land(online, 2, size=500)
    web_env.land(online, 3, size=250)
    response = web_env.client().get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    samples = scrape(response.get_data(as_text=True))
    for state, count in (("online", 1), ("suspended", 1), ("offline", 1), ("stale", 0), ("left", 0)):
        assert samples[("survey6_probes", (("state", state),))] == count, state
    assert samples[("survey6_probes_capture_health", (("health", "capturing"),))] == 1
    assert samples[("survey6_probes_capture_health", (("health", "suspended"),))] == 1
    assert samples[("survey6_heartbeats_received_total", ())] == 4
    assert samples[("survey6_uploads_landed_total", ())] == 3
    assert samples[("survey6_uploads_landed_bytes_total", ())] == 1750
    assert samples[("survey6_ingest_outbox_files", ())] == 2
    assert samples[("survey6_catalog_files", (("state", "ingested"),))] == 1
    assert ("process_resident_memory_bytes", ()) in samples


def test_metrics_can_need_a_web_account_or_be_off(web_env: WebEnv) -> None:
    guarded = web_env.make_app(WebSettings(metrics="basic-auth")).test_client()
    refused = guarded.get("/metrics")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic ")
    assert guarded.get("/metrics", headers=basic((VIEWER[0], "wrong-password"))).status_code == 401
    assert guarded.get("/metrics", headers=basic(VIEWER)).status_code == 200
    assert "survey6_probes" in guarded.get("/metrics", headers=basic(ADMIN)).get_data(as_text=True)
    off = web_env.make_app(WebSettings(metrics="off")).test_client()
    assert off.get("/metrics").status_code == 404
