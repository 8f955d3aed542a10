"""A Gearman worker written as Python `gear` users usually write one: no client id, no drain, no
SIGTERM handler (the process dies at once). It serves $GEARFLEET_FUNCTION on every server of
$GEARMAN_SERVERS. Payload "KEY SECONDS": records the execution (a line "KEY POD" appended to
$GEARFLEET_EXECUTIONS_FILE, when set), sleeps, answers "done KEY"."""

import os
import time

import gear


def main():
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
        job = worker.getJob()
        key, _, seconds = job.arguments.decode().partition(" ")
        if executions:
            with open(executions, "a") as log:
                log.write(f"{key} {pod}\n")
        time.sleep(float(seconds.split()[0]) if seconds.strip() else 0)
        job.sendWorkComplete(f"done {key}".encode())


if __name__ == "__main__":
    main()
