"""`fm serve`: an HTTP scoring server (fmcli.serve) until SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import signal
import threading

import click

from ..config import (SERVE_HOST as DEFAULT_HOST, SERVE_MAX_REQUEST_BYTES as DEFAULT_MAX_REQUEST_BYTES,
                      SERVE_PORT as DEFAULT_PORT, SERVE_RELOAD_INTERVAL as DEFAULT_RELOAD_INTERVAL,
                      SERVE_TIMEOUT as DEFAULT_TIMEOUT)
from . import _render
from ._ops import config_option
from ._options import ByteSize
from ._status import signal_name


@click.command(context_settings={"show_default": True})
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--host", default=DEFAULT_HOST,
              help="Address to listen on (0.0.0.0 or :: for every interface: the server has no "
                   "authentication, put it behind a proxy that has).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              help="Port to listen on (0: a free one, printed at start).")
@click.option("--threads", type=click.IntRange(1), default=None, show_default=False,
              help="Requests parsed and scored at once (one scoring thread each); more wait for a "
                   "free one up to --timeout.  [default: the CPUs available]")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=DEFAULT_TIMEOUT, metavar="SECONDS",
              help="How long a client may take to send a request (and an idle connection stays "
                   "open), a request may wait for a free thread (then 503), and SIGTERM waits "
                   "for the requests in flight.")
@click.option("--max-request-bytes", type=ByteSize(), default=str(DEFAULT_MAX_REQUEST_BYTES // (1 << 20)) + "M",
              help="Largest request body (e.g. 64M); a larger one is answered 413.")
@click.option("--reload-interval", type=click.FloatRange(0), default=DEFAULT_RELOAD_INTERVAL,
              metavar="SECONDS",
              help="How often the model files are checked for a new version (replaced by fm train "
                   "-o, say), which is then loaded and put in place without a failed request; "
                   "0: only on SIGHUP.")
@click.option("-q", "--quiet", is_flag=True, help="Log nothing but errors on standard error.")
@config_option("serve", "port = 8080, threads = 8")
def serve(models, host, port, threads, timeout, max_request_bytes, reload_interval, quiet):
    """Score rows over HTTP with the model files MODEL... (NAME=PATH, or
    PATH named by the file's stem: ctr.fm is ctr) until SIGTERM or SIGINT.

    \b
    Routes:
      POST /v1/models/NAME/predict   score the body's rows
      GET  /v1/models                names, paths, checksums, kinds, tasks
      GET  /healthz                  ok, degraded (a reload failed), draining
      GET  /metrics                  Prometheus text: requests, rows,
                                     errors, latency per model

    \b
    A body is (?format=jsonl|text|libffm|libsvm|raw, else by Content-Type):
      application/json   one JSON object per line (or a JSON array):
                         {"features": [3, 7], "fields": [0, 1],
                         "values": [1, 0.5]} (fields 0 and values 1 by
                         default), {"row": "0:3:1 1:7:0.5"}, or
                         {"raw": {"C1": "68fd1e64", ...}} / {"raw": [...]}
      text/plain         libffm or libsvm rows (label ignored; a libffm
                         row may leave it out)
      text/csv, text/tab-separated-values
                         raw rows through the model's preprocessing spec
                         (fm train --spec); ?label=1: they have a label

    The answer is {"model", "checksum" (SHA-256 of the model file that
    scored the rows), "rows", "predictions"}: the numbers fm predict prints
    (probabilities, values, or per row the class probabilities with
    "classes").  A bad row is 400 naming its line, an unknown model 404, a
    body over --max-request-bytes 413.

    A model file that is replaced is reloaded in the background and put in
    place at once: a request is scored by the model it started with, and a
    file that does not load keeps the previous model serving (the error is
    logged and in /healthz).  SIGHUP checks the files now.  SIGTERM or
    SIGINT stops accepting connections, answers the requests in flight and
    exits 0 (128 + the signal when some were still running after --timeout).
    A port in use exits with status 71.
    """
    from ..config import available_cpus
    from ..errors import Interrupted
    from ..serve import ServeOptions, Service, parse_model_args

    say = (lambda msg: _render.info(msg, quiet))
    options = ServeOptions(host=host, port=port, threads=threads or available_cpus(), timeout=timeout,
                           max_request_bytes=max_request_bytes, reload_interval=reload_interval)
    named = parse_model_args(models)
    # every model is loaded before the port is taken: a bad file fails here
    service = Service(named, options, log=lambda msg: _render.info(msg, quiet and not msg.startswith(
        "fm: warning:")))
    stop: list = [None]
    woken = threading.Event()
    with _signals(stop, woken, service):
        service.start()              # a port in use: one line (ListenError), nothing before it
        for name, slot in service.slots.items():
            spec = slot.current.model.spec
            say(f"model {name}: {slot.path} ({spec.kind} {spec.task}, checksum {slot.current.checksum[:12]})")
        say(f"listening on {service.url} ({options.threads} threads); SIGTERM or Ctrl-C stops")
        while stop[0] is None:
            woken.wait(1.0)
            woken.clear()
        say(f"fm: {signal_name(stop[0])}: answering the {service.in_flight} request(s) in flight, then exiting")
        drained = service.stop()
    if not drained:
        raise Interrupted(stop[0])
    say("stopped")


@contextlib.contextmanager
def _signals(stop: list, woken: threading.Event, service):
    """SIGTERM and SIGINT ask the server to stop (stop[0] is the signal);
    SIGHUP checks the model files now."""

    def on_stop(signum, frame):
        if stop[0] is None:
            stop[0] = signum
        woken.set()

    def on_hup(signum, frame):
        service.reload_now()

    saved = {}
    handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = on_hup
    for signum, handler in handlers.items():
        try:
            saved[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):   # not the main thread
            pass
    try:
        yield
    finally:
        for signum, previous in saved.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, previous)
