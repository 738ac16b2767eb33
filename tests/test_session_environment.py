"""The test session's ROS environment (conftest.py): the user's ROS_DOMAIN_ID is kept,
otherwise one is drawn from ROS's safe Linux range; discovery stays on localhost. And a node
process's numpy BLAS threads."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent


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
    show = "import os, tests.conftest; print(os.environ['ROS_DOMAIN_ID'], os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'])"
    result = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, timeout=120,
                            cwd=REPO,
                            env={**os.environ, "ROS_DOMAIN_ID": "7", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7", "LOCALHOST"]


def test_a_node_process_runs_numpys_blas_on_one_thread():
    """What detector_node.run() calls first: OpenBLAS's idle threads would otherwise poll
    after every small numpy product and take a core from the model (see single_threaded_blas)."""
    script = ("import json, numpy, threadpoolctl\n"
              "from vexkd_ros.environment import single_threaded_blas\n"
              "blas = lambda: [i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']\n"
              "before = blas()\n"
              "single_threaded_blas()\n"
              "print(json.dumps([before, blas()]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"})
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert before and after == [1] * len(before)
    if (os.cpu_count() or 1) > 1:
        assert max(before) > 1  # the default it changes
