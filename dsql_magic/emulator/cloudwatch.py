"""A small local CloudWatch endpoint serving the emulator's per-minute cluster metrics.

``boto3.client("cloudwatch", endpoint_url=<url>).get_metric_data(...)`` works against it for
namespace ``AWS/AuroraDSQL``, dimension ``ResourceId`` = the cluster id (manual, "Monitoring Aurora
DSQL with Amazon CloudWatch"), so the magic's CloudWatch path runs offline too. It speaks the two
wire protocols botocore uses for CloudWatch: ``json`` (awsJson1.0, ``X-Amz-Target:
GraniteServiceVersion20100801.<Operation>``; what botocore 1.44 sends) and ``query`` (form-encoded,
XML answers; older botocore). Operations: ``GetMetricData`` (MetricStat queries; metric math is
refused with a clear message) and ``ListMetrics``. Request signatures are not checked: any
credentials work, as with other local AWS emulators.

It reads figures from the `metering.Meter` and never changes them. It listens on 127.0.0.1 by
default, in a daemon thread, and never logs request bodies or headers (they carry signatures).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from .metering import METRICS, Meter, valid_statistic

log = logging.getLogger(__name__)

NAMESPACE = "AWS/AuroraDSQL"
DIMENSION = "ResourceId"
TARGET_PREFIX = "GraniteServiceVersion20100801."
XMLNS = "http://monitoring.amazonaws.com/doc/2010-08-01/"
MAX_BODY_BYTES = 1024 * 1024
MAX_QUERIES = 500  # CloudWatch's limit of MetricDataQueries per request

UNITS = {
    "TotalDPU": "None",
    "ReadDPU": "None",
    "WriteDPU": "None",
    "ComputeDPU": "None",
    "CommitLatency": "Milliseconds",
    "ComputeTime": "Milliseconds",
    "BytesRead": "Bytes",
    "BytesWritten": "Bytes",
}


class CloudWatchError(Exception):
    """A request CloudWatch would refuse: ``code`` and a message saying what to change."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# --- the operations (protocol-independent: plain dicts in, plain dicts out) -------------------


def _timestamp(value: Any, name: str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise CloudWatchError("InvalidParameterValue", f"{name} is not a timestamp") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return parsed.timestamp()
    raise CloudWatchError("MissingParameter", f"The parameter {name} is required.")


def _dimensions_match(dims: list[dict[str, Any]], resource_id: str) -> bool:
    return (
        len(dims) == 1 and dims[0].get("Name") == DIMENSION and dims[0].get("Value") == resource_id
    )


def get_metric_data(meter: Meter, resource_id: str, req: dict[str, Any]) -> dict[str, Any]:
    """GetMetricData over the meter's minute buckets. Timestamps are epoch seconds."""
    queries = req.get("MetricDataQueries") or []
    if not queries:
        raise CloudWatchError("MissingParameter", "The parameter MetricDataQueries is required.")
    if len(queries) > MAX_QUERIES:
        raise CloudWatchError("InvalidParameterValue", f"At most {MAX_QUERIES} queries allowed.")
    start = _timestamp(req.get("StartTime"), "StartTime")
    end = _timestamp(req.get("EndTime"), "EndTime")
    if end <= start:
        raise CloudWatchError("InvalidParameterValue", "EndTime must be after StartTime.")
    descending = req.get("ScanBy", "TimestampDescending") != "TimestampAscending"
    max_points = int(req.get("MaxDatapoints") or 100_800)
    results = []
    for q in queries:
        qid = q.get("Id")
        if not qid:
            raise CloudWatchError("MissingParameter", "Every query needs an Id.")
        if q.get("Expression"):
            raise CloudWatchError(
                "InvalidParameterValue",
                "The emulator's CloudWatch does not evaluate metric math expressions; "
                "use MetricStat queries.",
            )
        stat = q.get("MetricStat") or {}
        metric = stat.get("Metric") or {}
        name = metric.get("MetricName", "")
        period = int(stat.get("Period") or 0)
        statistic = str(stat.get("Stat", ""))
        if period <= 0 or period % 60:
            raise CloudWatchError(
                "InvalidParameterValue", "Period must be a positive multiple of 60 seconds."
            )
        if not valid_statistic(statistic):
            raise CloudWatchError(
                "InvalidParameterValue",
                f"Stat {statistic!r} is not supported; use Sum, Average, Minimum, Maximum, "
                "SampleCount or pNN.",
            )
        points: list[tuple[int, float]] = []
        if metric.get("Namespace") == NAMESPACE and _dimensions_match(
            metric.get("Dimensions") or [], resource_id
        ):
            points = meter.datapoints(name, start, end, period, statistic)
        if descending:
            points.reverse()
        points = points[:max_points]
        if q.get("ReturnData", True) is False:
            continue
        results.append(
            {
                "Id": qid,
                "Label": q.get("Label") or name,
                "Timestamps": [float(ts) for ts, _ in points],
                "Values": [v for _, v in points],
                "StatusCode": "Complete",
            }
        )
    return {"MetricDataResults": results, "Messages": []}


def list_metrics(resource_id: str, req: dict[str, Any]) -> dict[str, Any]:
    """ListMetrics: every metric the emulator publishes, with its ResourceId dimension."""
    namespace = req.get("Namespace")
    name = req.get("MetricName")
    metrics = []
    if namespace in (None, NAMESPACE):
        for metric in METRICS:
            if name in (None, metric):
                dims = [{"Name": DIMENSION, "Value": resource_id}]
                metrics.append({"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dims})
    return {"Metrics": metrics}


# --- the query protocol's form encoding ----------------------------------------------------


def unflatten(form: list[tuple[str, str]]) -> dict[str, Any]:
    """``A.member.1.B=x`` → ``{"A": [{"B": "x"}]}`` (the query protocol's nesting)."""
    root: dict[Any, Any] = {}
    for key, value in form:
        parts = key.split(".")
        path: list[str | int] = []
        i = 0
        while i < len(parts):
            if parts[i] == "member" and i + 1 < len(parts) and parts[i + 1].isdigit():
                path.append(int(parts[i + 1]))
                i += 2
            else:
                path.append(parts[i])
                i += 1
        node: Any = root
        for step in path[:-1]:
            node = node.setdefault(step, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    result = _lists(root)
    return result if isinstance(result, dict) else {}


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        if value and all(isinstance(k, int) for k in value):
            return [_lists(value[k]) for k in sorted(value)]
        return {k: _lists(v) for k, v in value.items()}
    return value


def _query_request(op: str, flat: dict[str, Any]) -> dict[str, Any]:
    """Coerce the query protocol's strings to the JSON shapes the operations take."""
    if op != "GetMetricData":
        return flat
    for q in flat.get("MetricDataQueries", []) or []:
        if "ReturnData" in q:
            q["ReturnData"] = str(q["ReturnData"]).lower() != "false"
    return flat


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _xml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "".join(f"<{k}>{_xml_value(v)}</{k}>" for k, v in value.items())
    if isinstance(value, list):
        return "".join(f"<member>{_xml_value(v)}</member>" for v in value)
    return escape(str(value))


def _query_response(op: str, result: dict[str, Any], request_id: str) -> str:
    if op == "GetMetricData":
        result = {
            "MetricDataResults": [
                r | {"Timestamps": [_iso(t) for t in r["Timestamps"]]}
                for r in result["MetricDataResults"]
            ],
            "Messages": [],
        }
    return (
        f'<{op}Response xmlns="{XMLNS}"><{op}Result>{_xml_value(result)}</{op}Result>'
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        f"</{op}Response>"
    )


# --- the HTTP server -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # request lines may hold signed query strings: never log them

    def do_GET(self) -> None:
        self._send(404, "text/plain", b"POST CloudWatch requests to /\n")

    def do_POST(self) -> None:
        request_id = str(uuid.uuid4())
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send(413, "text/plain", b"request too large\n", close=True)
            return
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target")
        if target:
            self._json(target, body, request_id)
        else:
            self._query(body, request_id)

    def _operation(self, op: str, req: dict[str, Any]) -> dict[str, Any]:
        srv = self.server
        if op == "GetMetricData":
            return get_metric_data(srv.meter_source(), srv.resource_id, req)
        if op == "ListMetrics":
            return list_metrics(srv.resource_id, req)
        raise CloudWatchError(
            "InvalidAction", f"The emulator's CloudWatch does not implement {op}.", 400
        )

    def _json(self, target: str, body: bytes, request_id: str) -> None:
        op = target.removeprefix(TARGET_PREFIX)
        try:
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                raise CloudWatchError("SerializationException", "The body is not JSON.") from None
            out = json.dumps(self._operation(op, req)).encode()
        except CloudWatchError as err:
            payload = json.dumps({"__type": err.code, "message": err.message}).encode()
            self._send(
                err.status,
                "application/x-amz-json-1.0",
                payload,
                extra={"x-amzn-RequestId": request_id, "x-amzn-query-error": f"{err.code};Sender"},
            )
            return
        self._send(200, "application/x-amz-json-1.0", out, extra={"x-amzn-RequestId": request_id})

    def _query(self, body: bytes, request_id: str) -> None:
        form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        flat = unflatten(form)
        op = str(flat.pop("Action", ""))
        flat.pop("Version", None)
        try:
            out = self._operation(op, _query_request(op, flat))
            xml = _query_response(op, out, request_id)
        except CloudWatchError as err:
            xml = (
                f'<ErrorResponse xmlns="{XMLNS}"><Error><Type>Sender</Type>'
                f"<Code>{escape(err.code)}</Code><Message>{escape(err.message)}</Message>"
                f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            )
            self._send(err.status, "text/xml", xml.encode())
            return
        self._send(200, "text/xml", xml.encode())

    def _send(
        self,
        status: int,
        ctype: str,
        payload: bytes,
        *,
        extra: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], meter_source: Callable[[], Meter], resource_id: str
    ) -> None:
        super().__init__(address, _Handler)
        self.meter_source = meter_source
        self.resource_id = resource_id


class CloudWatchEndpoint:
    """The endpoint's lifecycle: ``start()`` binds and serves in a daemon thread, ``stop()``
    shuts it down. ``meter`` is a `Meter` or a callable returning the current one (the cluster's
    meter may be created after the endpoint)."""

    def __init__(
        self,
        meter: Meter | Callable[[], Meter],
        resource_id: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._source: Callable[[], Meter] = meter if callable(meter) else (lambda: meter)
        self.resource_id = resource_id
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` — the ``endpoint_url`` for boto3."""
        if self._server is None:
            raise RuntimeError("the CloudWatch endpoint is not started; call start() first")
        address = self._server.server_address
        host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
        port = address[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def start(self) -> str:
        if self._server is None:
            self._server = _Server((self.host, self.port), self._source, self.resource_id)
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="dsql-cloudwatch", daemon=True
            )
            self._thread.start()
            log.info("CloudWatch endpoint on %s", self.url)
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> CloudWatchEndpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
