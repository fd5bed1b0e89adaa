"""The stand-in backend, stamping when its process runs and when it listens.

Cold-start rounds run the stand-in through this wrapper, so that the
benchmark learns, on the wall clock the client also reads, when the backend
process was running (this file's first line) and when it was ready (its
port listening, just before it announces so). Each stamp is appended to the
file named first on the command line, as `up NS` or `ready NS`; the other
arguments are the stand-in's own.

    python benchmarks/stamped_standin.py STAMPS --port 8081 --load-delay 0.2
"""

import time

UP_NS = time.time_ns()

# The imports come after the stamp: their cost is the process's, not RPH's.
import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

STANDIN = Path(__file__).resolve().parent.parent / "examples" / "standin.py"
READY_MESSAGE = "listening on"


def main() -> None:
    stamps = Path(sys.argv.pop(1))
    spec = importlib.util.spec_from_file_location("standin", STANDIN)
    assert spec is not None
    assert spec.loader is not None
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)

    def record(what: str, ns: int) -> None:
        with stamps.open("a") as file:
            file.write(f"{what} {ns}\n")

    # Through __dict__: the module is loaded from a path, unknown to mypy.
    announce = standin.__dict__["say"]

    def say(message: str) -> None:
        # Said right after the listening socket is bound, before the event
        # loop answers anything on it.
        if message.startswith(READY_MESSAGE):
            record("ready", time.time_ns())
        announce(message)

    record("up", UP_NS)
    standin.__dict__["say"] = say
    standin.__dict__["main"]()


if __name__ == "__main__":
    main()
