"""A separate process that publishes tests/support/ros_samples.messages(seed) until it is killed.

usage, from the repository root: python -m tests.support.ros_peer SEED
"""
import sys

import rclpy
from rclpy.executors import ExternalShutdownException

from tests.support import ros_samples


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("vexkd_test_peer")
    outgoing = ros_samples.messages(int(sys.argv[1]))
    publishers = {topic: node.create_publisher(type(msg), topic, 10) for topic, msg in outgoing.items()}

    def publish_all() -> None:
        for topic, msg in outgoing.items():
            publishers[topic].publish(msg)

    node.create_timer(0.2, publish_all)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


if __name__ == "__main__":
    main()
