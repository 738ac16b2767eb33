"""rclpy nodes, message conversions, bag writer and player. Imports vexkd_core for inference only."""
