"""`make test-fast` leaves out the tests marked cluster, browser or slow: a test module that starts `ray start` nodes
of its own or drives Chromium must say so with its marker, or the fast run would start clusters and browsers."""

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# what starts a Ray node of the test's own: tests/ray_nodes.py's helper or its two-node Cluster, or `ray start --head`
# spelled out
STARTS_NODES = re.compile(r"""start_node\(|\bCluster\(|["']start["'],\s*["']--head["']""")
DRIVES_CHROMIUM = re.compile(r"chromium", re.IGNORECASE)


def modules() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(TESTS.glob("test_*.py")) if path.name != Path(__file__).name}


def test_modules_that_start_ray_nodes_or_chromium_carry_their_markers():
    missing = []
    for name, text in modules().items():
        if STARTS_NODES.search(text) and "pytest.mark.cluster" not in text:
            missing.append(f"{name}: starts `ray start` nodes but has no pytest.mark.cluster")
        if DRIVES_CHROMIUM.search(text) and "pytest.mark.browser" not in text:
            missing.append(f"{name}: drives Chromium but has no pytest.mark.browser")
    assert not missing, "\n".join(missing)


def test_the_scan_finds_the_modules_it_is_meant_to_guard():
    """The patterns still match the ways the suite starts nodes and Chromium (a renamed helper would make the check
    above pass vacuously)."""
    texts = modules()
    assert {"test_s3_storage.py", "test_readme.py", "test_dashboard_browser.py"} <= {
        name for name, text in texts.items() if STARTS_NODES.search(text)}
    assert "test_dashboard_browser.py" in {name for name, text in texts.items() if DRIVES_CHROMIUM.search(text)}
