"""The test session's ROS environment (conftest.py): the user's ROS_DOMAIN_ID is kept,
otherwise one is drawn from ROS's safe Linux range; discovery stays on localhost."""
import os
import subprocess
import sys

import conftest


def test_the_users_domain_id_is_kept():
    assert conftest.session_domain_id({"ROS_DOMAIN_ID": "42"}) == "42"


def test_without_one_a_domain_in_the_safe_range_is_drawn():
    drawn = {int(conftest.session_domain_id({})) for _ in range(3000)}
    assert drawn <= set(range(0, 102)) and len(drawn) > 90  # from all of 0..101, not one fixed value


def test_this_session_runs_in_that_domain_on_localhost():
    domain = os.environ["ROS_DOMAIN_ID"]
    if conftest.USER_DOMAIN_ID:
        assert domain == conftest.USER_DOMAIN_ID
    else:
        assert int(domain) in range(0, 102)
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_importing_conftest_keeps_the_users_domain_and_forces_localhost():
    show = "import conftest, os; print(os.environ['ROS_DOMAIN_ID'], os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'])"
    result = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, timeout=120,
                            cwd=conftest.REPO / "tests",
                            env={**os.environ, "ROS_DOMAIN_ID": "7", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7", "LOCALHOST"]
