#!/usr/bin/env python3
"""Collector ingest rate with an independent client (grpcio): STREAMS
concurrent streams (one node each) publish BATCHES batches of EVENTS exec
events, serialized beforehand; prints `events N seconds S rate R events/s`
for the time from the first send to the last ack. Usage: ingest.py
HOST:PORT STREAMS BATCHES EVENTS (PYTHONPATH = the generated modules)."""
import sys
import threading
import time

import grpc
from spyglass.v1 import collector_pb2, events_pb2


def batches(node, n, per):
    ev = [events_pb2.Event(kind=events_pb2.EVENT_KIND_EXEC, time_unix_nano=1795549718856200274,
                           node=node,
                           process=events_pb2.Process(pid=7, ppid=1, comm="true", exe="/bin/true",
                                                      argv=["/bin/true", f"ingest-{i}"]))
          for i in range(per)]
    return [collector_pb2.Batch(node_id=node, sequence=s + 1, events=ev,
                                stream_id="ingest").SerializeToString() for s in range(n)]


def main():
    target, streams, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    work = [batches(f"ingest-{k}", n, per) for k in range(streams)]
    opts = [("grpc.max_send_message_length", 16 << 20)]
    channels = [grpc.insecure_channel(target, options=opts) for _ in range(streams)]
    acked = [0] * streams

    def run(k):
        call = channels[k].stream_stream("/spyglass.v1.Collector/Publish",
                                         request_serializer=lambda b: b,
                                         response_deserializer=collector_pb2.Ack.FromString)
        for _ in call(iter(work[k]), timeout=600):
            acked[k] += 1

    t = time.monotonic()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(streams)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    secs = time.monotonic() - t
    events = sum(acked) * per
    print(f"events {events} seconds {secs:.2f} rate {events / secs:.0f} events/s", flush=True)


if __name__ == "__main__":
    main()
