"""Python `gear` (PyPI) as a real Gearman peer for the interop tests.

usage:
  gear_peer.py client HOST PORT FUNCTION PAYLOAD [--background] [--priority high|normal|low] [--unique U]
      prints one line per event: STATUS n/d, DATA x, WARNING x, then COMPLETE x | FAIL | EXCEPTION x
  gear_peer.py worker HOST PORT FUNCTION MODE COUNT [--timeout MS] [--sleep S] [--id ID]
      MODE: reverse (status + data + complete), fail, exception, hang (never answers),
            crash (exits hard on its first job, holding it),
            late (sleeps --sleep seconds, then completes: past a --timeout shorter than that)
"""
import argparse
import os
import sys
import time

import gear


def connect(obj, host, port):
    obj.addServer(host, int(port))
    obj.waitForServer(timeout=10)


def client(a):
    c = gear.Client("interop-client")
    connect(c, a.host, a.port)
    prec = {"high": gear.PRECEDENCE_HIGH, "normal": gear.PRECEDENCE_NORMAL, "low": gear.PRECEDENCE_LOW}[a.priority]
    job = gear.Job(a.function.encode(), a.payload.encode(), unique=a.unique.encode() if a.unique else None)
    c.submitJob(job, background=a.background, precedence=prec, timeout=10)
    if a.background:
        print("CREATED", job.handle.decode())
        return
    deadline = time.time() + 20
    while not job.complete and time.time() < deadline:
        time.sleep(0.01)
    if job.numerator is not None:
        print("STATUS %s/%s" % (job.numerator.decode(), job.denominator.decode()))
    for chunk in job.data[:-1]:
        print("DATA", chunk.decode())
    if not job.complete:
        print("TIMEOUT")
    elif job.exception:
        print("EXCEPTION", job.exception.decode() if isinstance(job.exception, bytes) else job.exception)
    elif job.failure:
        print("FAIL")
    else:
        print("COMPLETE", (job.data[-1] if job.data else b"").decode())
    c.shutdown()


def worker(a):
    w = gear.Worker(a.id)
    connect(w, a.host, a.port)
    if a.timeout:
        # gear joins name and timeout as bytes when sending CAN_DO_TIMEOUT.
        w.registerFunction(a.function.encode(), timeout=a.timeout.encode())
    else:
        w.registerFunction(a.function)
    for _ in range(int(a.count)):
        job = w.getJob()
        arg = job.arguments.decode()
        if a.mode == "reverse":
            job.sendWorkStatus(1, 2)
            job.sendWorkData(arg[:1].encode())
            job.sendWorkComplete(arg[::-1].encode())
        elif a.mode == "fail":
            job.sendWorkFail()
        elif a.mode == "exception":
            job.sendWorkException(b"it broke")
        elif a.mode == "hang":
            time.sleep(30)
        elif a.mode == "late":
            time.sleep(float(a.sleep))
            job.sendWorkComplete(arg[::-1].encode())
        elif a.mode == "crash":
            sys.stdout.flush()
            os._exit(3)
        print("DID", arg, flush=True)
    w.shutdown()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client")
    for n in ("host", "port", "function", "payload"):
        c.add_argument(n)
    c.add_argument("--background", action="store_true")
    c.add_argument("--priority", default="normal")
    c.add_argument("--unique", default="")
    w = sub.add_parser("worker")
    for n in ("host", "port", "function", "mode", "count"):
        w.add_argument(n)
    w.add_argument("--timeout", default="")
    w.add_argument("--sleep", default="5")
    w.add_argument("--id", default="interop-worker")
    a = p.parse_args()
    client(a) if a.cmd == "client" else worker(a)


if __name__ == "__main__":
    main()
