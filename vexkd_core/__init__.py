"""VeXKD core library: data, geometry, models, losses, distillation, evaluation, and the
detector nodes' pipeline without ROS (runtime).

Imports neither rclpy nor the training CLI (dependency direction: ros -> core <- train).
"""
