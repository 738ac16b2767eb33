"""The detector node's pipeline without ROS: typed sweeps, camera frames, calibrations and
transforms in, boxes, maps and stage times out (pipeline, node_inputs), its settings as one
value (settings), triggers held until their inputs have arrived (trigger_gate) and one worker
thread on the newest trigger (worker). Shared by the rclpy nodes (vexkd_ros) and any other
front end (a C++ wrapper, a bag-only batch tool), none of which needs the ROS package for it.
"""
