"""A Gearman worker written as Python `gear` users usually write one: no client id, no drain, no
SIGTERM handler (the process dies at once). It goes on when one of its servers goes away (see
below). It serves $GEARFLEET_FUNCTION on every server of $GEARMAN_SERVERS. Payload "KEY SECONDS":
records the execution (a line "KEY POD" appended to $GEARFLEET_EXECUTIONS_FILE, when set), sleeps,
answers "done KEY"."""

import logging
import os
import time

import gear


def main():
    # gear's own warnings and errors (an ERROR packet from a server, a dropped connection), with
    # the time, for the e2e tests' diagnostics.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    function = os.environ["GEARFLEET_FUNCTION"]
    executions = os.environ.get("GEARFLEET_EXECUTIONS_FILE")
    pod = os.environ.get("POD_NAME", "")
    worker = gear.Worker("gear-worker")
    for server in os.environ.get("GEARMAN_SERVERS", "localhost:4730").split(","):
        host, _, port = server.strip().rpartition(":")
        worker.addServer(host, int(port))
    worker.waitForServer()
    worker.registerFunction(function)
    while True:
        try:
            job = worker.getJob()
        except OSError:
            # gear's getJob asks every server for work and raises (BrokenPipeError) when one of
            # them has just closed its connection (a broker shutting down); gear has already
            # marked that connection lost and reconnects to it on its own. A worker that lets
            # this escape dies, and a job it was finishing may run again elsewhere.
            continue
        key, _, seconds = job.arguments.decode().partition(" ")
        if executions:
            with open(executions, "a") as log:
                log.write(f"{key} {pod}\n")
        time.sleep(float(seconds.split()[0]) if seconds.strip() else 0)
        job.sendWorkComplete(f"done {key}".encode())


if __name__ == "__main__":
    main()
