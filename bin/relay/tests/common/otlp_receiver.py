"""A real OTLP/HTTP receiver for the tests: takes POST /v1/traces and /v1/metrics in protobuf,
decodes them with the opentelemetry-proto package (not relay's code), and prints one JSON line
per span and per metric data point. Its first line is `listening PORT`.
"""

import http.server
import json
import sys
import threading

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

LOCK = threading.Lock()


def say(line):
    with LOCK:
        print(json.dumps(line), flush=True)


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-type") != "application/x-protobuf":
            self.send_response(415)
            self.end_headers()
            return
        headers = {"x-test": self.headers.get("x-test")}
        if self.path == "/v1/traces":
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                service = attributes(resource.resource.attributes).get("service.name")
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        say({
                            "signal": "span", "service": service, "headers": headers,
                            "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(), "name": span.name,
                            "start_ns": span.start_time_unix_nano, "end_ns": span.end_time_unix_nano,
                            "status": span.status.code, "attributes": attributes(span.attributes),
                        })
            answer = trace_service_pb2.ExportTraceServiceResponse()
        elif self.path == "/v1/metrics":
            request = metrics_service_pb2.ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        data = getattr(metric, kind)
                        for point in data.data_points:
                            if kind == "histogram":
                                number = point.count
                            else:
                                number = point.as_double if point.HasField("as_double") else point.as_int
                            say({"signal": "metric", "name": metric.name, "kind": kind,
                                 "value": number, "attributes": attributes(point.attributes)})
            answer = metrics_service_pb2.ExportMetricsServiceResponse()
        else:
            self.send_response(404)
            self.end_headers()
            return
        payload = answer.SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    say_port = f"listening {server.server_address[1]}"
    with LOCK:
        print(say_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
