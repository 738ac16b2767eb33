"""VeXKD core library: data, geometry, models, losses, distillation, evaluation.

Imports neither rclpy nor the training CLI (dependency direction: ros -> core <- train).
"""
