"""rclpy nodes, message conversions, bag writer and player: only what touches ROS. The nodes'
pipeline without ROS is vexkd_core.runtime."""
