"""``GET /console`` and its static files: served from the package, nothing else, nothing remote."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from lockerd.console.routes import STATIC_FILES, STATIC_PACKAGE
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import lockerd, test_settings

STATIC = resources.files(STATIC_PACKAGE).joinpath("static")


def test_every_static_file_is_listed_and_every_listed_file_exists() -> None:
    on_disk = {entry.name for entry in STATIC.iterdir() if entry.is_file()}
    assert on_disk == set(STATIC_FILES)


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No build step and no network at run time: every import and URL is this origin's."""
    for name in STATIC_FILES:
        text = STATIC.joinpath(name).read_text(encoding="utf-8")
        remote = [
            url
            for url in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text)
            if url != "http://www.w3.org/2000/svg"  # the SVG namespace, not a request
        ]
        assert remote == [], (name, remote)
        for target in re.findall(r"""from\s+["']([^"']+)["']""", text):
            assert target.startswith("./") and target[2:] in STATIC_FILES, (name, target)


async def test_the_page_and_its_files_are_served(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        page = await svc.http.get("/console")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert 'src="console/app.js"' in page.text
        for name, content_type in STATIC_FILES.items():
            if name.endswith(".html"):
                continue
            response = await svc.http.get(f"/console/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"] == content_type
            assert response.headers["x-content-type-options"] == "nosniff"
        for missing in ("/console/nope.js", "/console/console.html", "/console/..%2Froutes.py"):
            response = await svc.http.get(missing)
            assert response.status_code == 404, missing
            assert response.json()["error"] == "not_found"
