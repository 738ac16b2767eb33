"""The node's health: its throttled warnings in the log, and /diagnostics once a second as
Autoware's nodes report theirs, one DiagnosticStatus named `<node>: detector` with rates,
drops, latency and the last problem.

Level: ERROR when a frame failed since the last report, WARN when an input was refused or
left out, else OK. Values (KeyValue, as text): input_rate_hz (triggers), output_rate_hz
(frames published), triggers_in, frames_out, dropped (triggers replaced by a newer one
before the model took them), pipeline_latency_ms (last frame: input stamp to publish, or input
arrival to publish when the stamps are not on the node's clock), latency_from (which of the
two), processing_time_ms (last frame), last_warning, last_error, trained_on (the dataset the
model was trained on, as its checkpoint or sidecar records it).
"""
from __future__ import annotations

import re
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Header

from vexkd_core.runtime.worker import TwoStageWorker

from .node_outputs import FROM_STAMP, PipelineLatency

DIAGNOSTICS_PERIOD_S = 1.0
WARN_PERIOD_S = 5.0  # at most one log line per kind of warning in this time
DIAGNOSTICS_QOS = QoSProfile(depth=10)


class NodeHealth:
    def __init__(self, node: Node, worker: TwoStageWorker, trained_on: str):
        self._node, self._worker, self._trained_on = node, worker, trained_on
        self._lock = threading.Lock()
        self.frames_out = 0
        self._latency = PipelineLatency(float("nan"), FROM_STAMP)
        self._processing_ms = float("nan")
        self._last_warning = self._last_error = ""
        self._warned = self._failed = False  # since the last report
        self._logged: dict[str, float] = {}  # kind -> when its last warning was logged
        self._reported = (time.monotonic(), 0, 0)  # (when, triggers in, frames out)
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        # On the steady clock: a report per wall-clock second whatever /clock does. A ROS-time
        # timer under use_sim_time stalls on a paused bag, and after a looped bag sent /clock
        # back it left the executor waiting out the jump (the node then missed Ctrl-C).
        self._timer = node.create_timer(DIAGNOSTICS_PERIOD_S, self.report,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))

    def published(self, latency: PipelineLatency, processing_ms: float) -> None:
        with self._lock:
            self.frames_out += 1
            self._latency, self._processing_ms = latency, processing_ms

    def warn(self, kind: str, message: str) -> None:
        """Reported each time; logged at most once per kind per WARN_PERIOD_S (rclpy throttles
        per call site, which would let one kind of bad input hide every other)."""
        now = time.monotonic()
        with self._lock:
            self._last_warning, self._warned = message, True
            logged = now - self._logged.get(kind, -WARN_PERIOD_S) >= WARN_PERIOD_S
            if logged:
                self._logged[kind] = now
        if logged:
            self._node.get_logger().warning(message)

    def warn_text(self, message: str) -> None:
        """warn() with messages alike up to their numbers as one kind."""
        self.warn(re.sub(r"[0-9.]+", "#", message), message)

    def failed(self, text: str) -> None:
        with self._lock:
            self._last_error, self._failed = text, True

    def report(self) -> None:
        now, offered = time.monotonic(), self._worker.offered
        with self._lock:
            since, offered_before, out_before = self._reported
            period = max(now - since, 1e-9)
            level, message = (DiagnosticStatus.ERROR, self._last_error) if self._failed else \
                (DiagnosticStatus.WARN, self._last_warning) if self._warned else (DiagnosticStatus.OK, "OK")
            values = {"input_rate_hz": (offered - offered_before) / period,
                      "output_rate_hz": (self.frames_out - out_before) / period,
                      "triggers_in": offered, "frames_out": self.frames_out, "dropped": self._worker.dropped,
                      "pipeline_latency_ms": self._latency.milliseconds,
                      "latency_from": self._latency.counted_from, "processing_time_ms": self._processing_ms,
                      "last_warning": self._last_warning, "last_error": self._last_error,
                      "trained_on": self._trained_on}
            self._reported, self._warned, self._failed = (now, offered, self.frames_out), False, False
        name = self._node.get_name()
        status = DiagnosticStatus(level=level, name=f"{name}: detector", message=message, hardware_id=name,
                                  values=[KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v))
                                          for k, v in values.items()])
        self._publisher.publish(DiagnosticArray(header=Header(stamp=self._node.get_clock().now().to_msg()),
                                                status=[status]))
