"""A separate process that publishes tests/ros_samples.messages(seed) until it is killed.

usage: python tests/ros_peer.py SEED
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rclpy  # noqa: E402
from rclpy.executors import ExternalShutdownException  # noqa: E402

import ros_samples  # noqa: E402


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
